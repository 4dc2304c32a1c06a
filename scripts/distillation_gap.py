"""How much of the distilled-vs-Gaussian weight NMSE is least-squares noise? (Li et al. 2024, sec. 3.2; issue 7)

Per sigma of the paper's 10-step grid: least-squares distillations of the network on nested prefixes of one draw
of noisy training images (2,048 ... --n-max), each compared with the Gaussian denoiser's W (weight NMSE), and the
split-half estimate of the NMSE that infinitely many samples would leave (analysis.weight_nmse_versus_samples).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/distillation_gap.py shipped:unet-small-fashion-mnist \
        [--n-max 32768] [--out results/distillation-gap.json]
"""

import argparse
import json
from pathlib import Path

from denoiserlab import data
from denoiserlab.analysis import gaussian_linear_map, weight_nmse_versus_samples
from denoiserlab.atomic import atomic_write_text
from denoiserlab.denoisers import GaussianDenoiser
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.networks import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="checkpoint path or shipped:NAME (must record its training_data)")
    parser.add_argument("--n-max", type=int, default=32768, help="noisy samples per sigma (largest prefix)")
    parser.add_argument("--steps", type=int, default=10, help="EDM sigma grid size (the paper's 10 steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    network = load(args.network).eval()
    train = data.load(**network.training_data)
    images, gaussian = train.as_float(), GaussianDenoiser(train)
    dim = images[0].numel()  # least squares needs more samples than D + 1 unknowns per output
    sizes = [n for n in (2048, 4096, 8192, 16384, 32768, 65536) if dim + 1 <= n < args.n_max] + [args.n_max]
    print("sigma    " + "  ".join(f"n={n:<6d}" for n in sizes) + "  split-half  (weight NMSE vs the Gaussian's W)")
    rows = []
    for level, sigma in enumerate(edm_sigmas(args.steps).tolist()):
        row = weight_nmse_versus_samples(network, images, sigma, gaussian_linear_map(gaussian, sigma)[0], sizes,
                                         seed=args.seed + level)
        rows.append({"sigma": sigma, **row})
        print(f"{sigma:7.3f}  " + "  ".join(f"{e:8.4f}" for e in row["weight_nmse"])
              + f"  {row['noise_free_nmse']:10.4f}", flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps({"network": args.network, "seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
