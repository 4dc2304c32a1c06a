"""Denoising MSE on held-out test images vs sigma: a network against the optimal and Gaussian denoisers of its
own training set (issue 5's quality evidence; the network should win at middle sigma).

    .venv/bin/python scripts/heldout_mse.py shipped:unet-small-fashion-mnist [--n 200]
"""

import argparse

import torch

from denoiserlab import data
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser
from denoiserlab.diffusion import add_noise, edm_sigmas
from denoiserlab.networks import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("network", help="checkpoint path or shipped:NAME (must record its training_data)")
    parser.add_argument("--n", type=int, default=200, help="held-out test images")
    args = parser.parse_args()
    network = load(args.network).eval()
    train = data.load(**network.training_data)
    test = data.load(**data.held_out_options(network.training_data))
    methods = {"network": network, "optimal": OptimalDenoiser(train), "gaussian": GaussianDenoiser(train)}
    x0 = test.as_float(0, args.n)
    print("sigma    " + "  ".join(f"{name:>9s}" for name in methods) + "   (MSE per element, [-1, 1] scale)")
    with torch.no_grad():
        for sigma in edm_sigmas(10).tolist():
            x_t, _ = add_noise(x0, sigma, seed=1)
            errors = [(den(x_t, sigma) - x0).pow(2).mean().item() for den in methods.values()]
            print(f"{sigma:7.3f}  " + "  ".join(f"{e:9.5f}" for e in errors))


if __name__ == "__main__":
    main()
