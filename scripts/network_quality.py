"""Sample quality of trained networks (issue 5's evidence): K Heun samples per network from shared seeded noise,
their distances to the nearest training image and the share of copies (nearest / second-nearest distance < 1/3), the generalization score (Li et al. eq. 14)
and Fréchet distances computed on the features of our own classifier of the training set's dataset (no downloaded
weights: shipped:fashion-mnist-classifier.pt, shipped:emoji-classifier.pt; other datasets: --feature-model PATH, or
no Fréchet distances).

    .venv/bin/python scripts/network_quality.py shipped:unet-small-fashion-mnist [more networks] \
        [--n 1000] [--out results/network-quality]

Writes OUT/quality.json; the samples are kept in OUT/stages/ (safetensors, keyed by the checkpoint's content hash,
--n, --steps and --seed, so a rerun reuses them only for the same network and settings). Fréchet distances are
reported against the held-out test split and against as many training images, beside the same distance between
training and test images (the floor a perfect sampler reaches with this many samples).
"""

import argparse
from pathlib import Path

import torch

from denoiserlab import data
from denoiserlab.analysis import (
    feature_frechet_distance,
    generalization_score,
    load_feature_model,
    memorized_fraction,
)
from denoiserlab.analysis.memorization import nearest_neighbour_distances
from denoiserlab.assets import assets_folder, resolve
from denoiserlab.atomic import write_json
from denoiserlab.diffusion import sample_heun, standard_noise
from denoiserlab.networks import load
from denoiserlab.studies.common.cache import StageCache, checkpoint_fingerprint


def samples_of(network, spec: str, args: argparse.Namespace, cache: StageCache) -> torch.Tensor:
    """args.n Heun samples [n, C, H, W] from standard_noise(args.seed), stored in `cache` under the checkpoint's
    content hash and the sampling settings; a stored value of the wrong shape or with NaN is sampled again."""
    shape = (args.n, network.img_channels, network.img_resolution, network.img_resolution)
    key = {"network": checkpoint_fingerprint(resolve(spec)), "n": args.n, "steps": args.steps, "seed": args.seed}

    def sample() -> torch.Tensor:
        noise = standard_noise(shape, args.seed)
        with torch.no_grad():
            return torch.cat([sample_heun(network, chunk, args.steps, progress=True).images
                              for chunk in noise.split(args.batch_size)]).clamp(-1, 1)

    samples = cache.run("samples", key, sample)
    if not isinstance(samples, torch.Tensor) or tuple(samples.shape) != shape or not samples.isfinite().all():
        cache.path("samples", key).unlink()
        samples = cache.run("samples", key, sample)
    return samples


def feature_model_for(spec: str, source: str):
    """The feature model of --feature-model, or with "auto" our classifier of the dataset `source` when one ships
    (None: no Fréchet distances)."""
    if spec != "auto":
        return load_feature_model(spec)
    same_images = {"fashion-mnist-full": "fashion-mnist"}  # the vendored subset's classifier reads all 70k images
    path = assets_folder("feature_models") / f"{same_images.get(source, source)}-classifier.pt"
    return load_feature_model(path) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", help="checkpoint paths or shipped:NAME (must record training_data)")
    parser.add_argument("--n", type=int, default=1000, help="samples per network")
    parser.add_argument("--steps", type=int, default=18, help="Heun steps (EDM grid)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared initial noise")
    parser.add_argument("--feature-model", default="auto",
                        help="TorchScript encoder; auto: shipped:SOURCE-classifier.pt of each network's dataset")
    parser.add_argument("--out", type=Path, default=Path("results/network-quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = {"n_samples": args.n, "steps": args.steps, "seed": args.seed, "feature_model": args.feature_model,
             "networks": {}}
    cache = StageCache(args.out)
    for spec in args.networks:
        network = load(spec).eval()
        train = data.load(**network.training_data).as_float()
        test = data.load(**data.held_out_options(network.training_data)).as_float()
        reference = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:len(test)]]
        samples = samples_of(network, spec, args, cache)
        features = feature_model_for(args.feature_model, network.training_data["source"])
        distances, _ = nearest_neighbour_distances(samples, train)
        row = {
            "n_train": len(train),
            "nearest_distance_mean": distances.mean().item(),
            "nearest_distance_median": distances.median().item(),
            "nearest_distance_min": distances.min().item(),
            "generalization_score": generalization_score(samples, train),
            "memorized_fraction": memorized_fraction(samples, train),
        }
        if features is not None:
            row.update(frechet_vs_test=feature_frechet_distance(features, samples, test),
                       frechet_vs_train=feature_frechet_distance(features, samples, reference),
                       frechet_train_vs_test=feature_frechet_distance(features, reference, test))
        table["networks"][spec] = row
        print(spec, {key: round(value, 4) for key, value in row.items()}, flush=True)
    write_json(args.out / "quality.json", table)
    print(f"quality.json in {args.out}/")


if __name__ == "__main__":
    main()
