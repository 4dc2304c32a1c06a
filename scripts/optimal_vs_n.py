"""How close is the optimal denoiser of N training images to the population's best (Bayes) denoiser on held-out
images? Prints the held-out MSE of OptimalDenoiser(first N of a seeded permutation of a training set) per sigma and
N, beside the Gaussian denoiser of the whole set: where the MSE stops falling as N grows, the optimal denoiser of
N images is already at the Bayes error, so a network trained on N images cannot beat it by more than the noise.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/optimal_vs_n.py --data fashion-mnist-full \\
        --n-train 2500 5000 10000 20000 40000 60000 --n-test 1024 --sigmas 12.91 8.401 5.315 3.257 1.923

The held-out noise is `analysis.heldout.heldout_inputs` (seed 1), as in scripts/heldout_mse.py.
"""

from __future__ import annotations

import argparse
import json

import torch

from denoiserlab import data
from denoiserlab.analysis.heldout import heldout_inputs, mse_per_level
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser


def held_out_mse(denoiser, z: torch.Tensor, sigmas: torch.Tensor, test: torch.Tensor) -> list[float]:
    """MSE per element of denoiser(z[l], sigma_l) against the clean test images, per level: [L] floats."""
    outputs = torch.stack([denoiser(z[level], float(sigma)) for level, sigma in enumerate(sigmas.tolist())])
    return mse_per_level(outputs, test).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist-full", help="data.load source (default: %(default)s)")
    parser.add_argument("--n-train", type=int, nargs="+", default=[2500, 5000, 10000, 20000, 40000, 60000])
    parser.add_argument("--n-test", type=int, default=1024, help="held-out test images")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[12.91, 8.401, 5.315, 3.257, 1.923])
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation that picks the N images")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    sigmas = torch.tensor(args.sigmas, dtype=torch.float64)
    test = data.load(source=args.data, split="test").as_float(0, args.n_test).double()
    z = heldout_inputs(test, sigmas)
    train = data.load(source=args.data, split="train").as_float().double()
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))
    table = {"sigmas": args.sigmas, "n_test": test.shape[0], "optimal": {}}
    print(f"held-out MSE on {test.shape[0]} {args.data} test images ([-1, 1] scale)")
    print("N \\ sigma " + "".join(f"{sigma:>9.3f}" for sigma in args.sigmas))
    for n in args.n_train:
        if n > train.shape[0]:
            raise SystemExit(f"--n-train {n} exceeds the {train.shape[0]} training images")
        table["optimal"][n] = held_out_mse(OptimalDenoiser(train[order[:n]]), z, sigmas, test)
        print(f"{n:>9} " + "".join(f"{value:9.5f}" for value in table["optimal"][n]), flush=True)
    table["gaussian_all"] = held_out_mse(GaussianDenoiser(train), z, sigmas, test)
    print(f"{'Gaussian':>9} " + "".join(f"{value:9.5f}" for value in table["gaussian_all"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(table, handle, indent=1)


if __name__ == "__main__":
    main()
