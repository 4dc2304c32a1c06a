"""Networks' fidelity on the EDM grid (issue 14's targets), printed as a table and optionally saved as JSON:

- held-out MSE: denoising MSE on test images the network never saw, beside the optimal and Gaussian denoisers of
  its own training set, and the ratio network / min(optimal, Gaussian) (target: <= 1.02 at every sigma) with its
  standard error over the held-out images (`analysis.heldout.ratio_to_best_with_error`);
- forward MSE(network, optimal) on training images (the locality paper's Fig. 2), and its value at the largest
  sigma over its peak (target: <= 0.1).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/heldout_mse.py shipped:unet-small-fashion-mnist [NET ...] \
        [--n 128] [--json FILE] [--cache DIR] [--device cuda]

Networks sharing a training set share its closed forms' outputs, so a learning curve (every checkpoint of a run)
costs one network evaluation per checkpoint. With --cache DIR the closed forms' outputs are stored there (a study
stage cache: safetensors, keyed by the training set, --n and --steps, recomputed when damaged), so checkpoints
evaluated later, e.g. while a run trains, cost only their own evaluation.
"""

import argparse
import dataclasses
import json

import torch

from denoiserlab import data
from denoiserlab.analysis.heldout import errors_per_image, heldout_inputs, mse_per_level, ratio_to_best_with_error
from denoiserlab.denoisers import GaussianDenoiser, OptimalDenoiser
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import load
from denoiserlab.studies.common.cache import StageCache
from denoiserlab.studies.locality_sets import forward_set, outputs_on
from denoiserlab.validation import check_device

BATCH = 64


def held_out_set(training_data: dict, heldout_source: str | None):
    """The test split matching a training set (data.held_out_options), from `heldout_source` instead of the
    training set's own source when given (e.g. fashion-mnist-full's 10,000 test images for a network trained on the
    vendored fashion-mnist subset, whose own test split has 1,000)."""
    options = data.held_out_options(training_data)
    return data.load(**(options if heldout_source is None else {**options, "source": heldout_source}))


def training_copies(test, train) -> int:
    """How many held-out images are exact (byte for byte) copies of a training image."""
    seen = {image.numpy().tobytes() for image in train.uint8}
    return sum(image.numpy().tobytes() in seen for image in test.uint8)


def evaluation_inputs(training_data: dict, train, sigmas, n: int, levels: list[int], forward: bool,
                      heldout_source: str | None) -> dict:
    """Held-out test images, their noisy copies at the grid's `levels` and, with `forward`, the forward-process
    inputs of one training set `train` (loaded from `training_data`; seeded: the same on every run, so they are
    recomputed rather than stored)."""
    test_set = held_out_set(training_data, heldout_source)
    test_set = dataclasses.replace(test_set, uint8=test_set.uint8[:n])
    copies = training_copies(test_set, train)
    if copies:
        print(f"note: {copies} of the {len(test_set)} held-out images are exact copies of training images")
    test = test_set.as_float()
    inputs = {"test": test, "heldout_z": heldout_inputs(test, sigmas, levels=levels)}
    if forward:
        inputs["forward_z"] = forward_set(train.as_float(), sigmas, n, seed=0)["z"]
    return inputs


def closed_form_outputs(train, inputs: dict, sigmas, device: str = "cpu") -> dict:
    """The optimal and Gaussian denoisers of the training set `train` on `inputs` (held-out copies at `sigmas`, one
    per level of inputs["heldout_z"]): their held-out errors per image and level, and the optimal denoiser's
    outputs on the forward-process inputs when there are some."""
    optimal, gaussian = OptimalDenoiser(train), GaussianDenoiser(train)
    outputs = {"image_errors": {name: errors_per_image(outputs_on(den, inputs["heldout_z"], sigmas, BATCH, device,
                                                                  label=name), inputs["test"])
                                for name, den in (("optimal", optimal), ("gaussian", gaussian))}}
    if "forward_z" in inputs:
        outputs["forward_optimal"] = outputs_on(optimal, inputs["forward_z"], sigmas, BATCH, device,
                                                label="optimal (forward)")
    return outputs


def count(text: str) -> int:
    """An argparse type: a whole number >= 1 (images, grid steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="+", help="checkpoint paths or shipped:NAME (must record training_data)")
    parser.add_argument("--n", type=count, default=128, help="held-out test images (and forward pairs per sigma)")
    parser.add_argument("--steps", type=count, default=18, help="EDM grid size")
    parser.add_argument("--json", help="write every number to this JSON file")
    parser.add_argument("--cache", help="folder that keeps the closed forms' outputs between runs")
    parser.add_argument("--curve", action="store_true",
                        help="one line of ratios per network (a learning curve over a run's checkpoints)")
    parser.add_argument("--sigma-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="only the grid's sigmas in [LOW, HIGH], without the forward curve: a cheap look at a few "
                             "levels while a run trains, or many held-out images (--n 10000) where it matters")
    parser.add_argument("--heldout-source", metavar="SOURCE",
                        help="take the held-out images from this data source's test split (same image options; it "
                             "must not hold the network's training images, exact copies are counted and printed)")
    parser.add_argument("--device", default="cpu", help="where networks and closed forms run: cpu, cuda, cuda:N")
    args = parser.parse_args()
    try:
        args.device = str(check_device(args.device))
    except DenoiserLabError as error:
        parser.error(str(error))
    sigmas = edm_sigmas(args.steps)
    levels = levels_in_range(sigmas, args.sigma_range)
    if not levels:
        parser.error(f"no sigma of the {args.steps}-step grid lies in --sigma-range {args.sigma_range}")
    forward_wanted = args.sigma_range is None  # the forward curve needs the whole grid
    try:
        report = evaluate(args, sigmas, levels, forward_wanted)
    except DenoiserLabError as error:  # a bad network path, data source or shape: one line, exit code 2
        parser.error(str(error))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)


def evaluate(args, sigmas, levels: list[int], forward_wanted: bool) -> dict:
    """Every network's numbers (the JSON report), printing a table or a curve row per network as it goes."""
    report, shared = {}, {}
    cache = StageCache(args.cache) if args.cache else None
    for spec in args.networks:
        network = load(spec, device=args.device).eval()
        key = json.dumps(network.training_data, sort_keys=True)
        if key not in shared:
            train = data.load(**network.training_data)  # read once per training set
            inputs = evaluation_inputs(network.training_data, train, sigmas, args.n, levels, forward_wanted,
                                       args.heldout_source)
            compute = lambda: closed_form_outputs(train, inputs, sigmas[levels], args.device)  # noqa: E731
            stage_key = {"training_data": network.training_data, "n": args.n, "steps": args.steps,
                         "errors": "per image", **({} if forward_wanted else {"levels": levels}),
                         **({} if args.heldout_source is None else {"heldout_source": args.heldout_source})}
            outputs = cache.run("heldout-closed-forms", stage_key, compute) if cache else compute()
            shared[key] = {**inputs, **outputs}
        inputs = shared[key]
        image_errors = {"network": errors_per_image(outputs_on(network, inputs["heldout_z"], sigmas[levels], BATCH,
                                                              args.device), inputs["test"]),
                        **inputs["image_errors"]}
        errors = {name: values.mean(dim=1) for name, values in image_errors.items()}
        ratio, ratio_error = ratio_to_best_with_error(image_errors, "network", ["optimal", "gaussian"])
        worst = ratio.argmax()
        report[spec] = {"sigmas": sigmas[levels].tolist(), **{k: v.tolist() for k, v in errors.items()},
                        "ratio": ratio.tolist(), "ratio_standard_error": ratio_error.tolist(),
                        "worst_ratio": ratio[worst].item(), "worst_ratio_sigma": sigmas[levels][worst].item(),
                        "worst_ratio_standard_error": ratio_error[worst].item()}
        forward = None
        if forward_wanted:
            forward = mse_per_level(outputs_on(network, inputs["forward_z"], sigmas, BATCH, args.device),
                                    inputs["forward_optimal"])
            report[spec].update(forward_mse_to_optimal=forward.tolist(),
                                forward_end_over_peak=(forward[0] / forward.max()).item())
        if args.curve:
            print_curve_row(spec, sigmas[levels], ratio, ratio_error, forward, header=len(report) == 1)
        else:
            print_table(spec, sigmas[levels], errors, ratio, ratio_error, forward)
    return report


def levels_in_range(sigmas, sigma_range) -> list[int]:
    """Indices of the grid's sigmas within [low, high] (every index when sigma_range is None)."""
    low, high = sigma_range if sigma_range is not None else (0.0, float("inf"))
    return [level for level, sigma in enumerate(sigmas.tolist()) if low <= sigma <= high]


def print_table(spec, sigmas, errors, ratio, ratio_error, forward) -> None:
    """One network's errors per sigma; forward None: not computed (--sigma-range)."""
    print(f"\n{spec}: held-out MSE ([-1, 1] scale), ratio = network / min(optimal, gaussian) with its standard error "
          "over the images; forward MSE to optimal")
    print(f"{'sigma':>8s} {'network':>9s} {'optimal':>9s} {'gaussian':>9s} {'ratio':>7s} {'+-':>6s} {'fwd-opt':>9s}")
    for level, sigma in enumerate(sigmas.tolist()):
        forward_text = f"{forward[level]:9.5f}" if forward is not None else f"{'-':>9s}"
        print(f"{sigma:8.3f} {errors['network'][level]:9.5f} {errors['optimal'][level]:9.5f} "
              f"{errors['gaussian'][level]:9.5f} {ratio[level]:7.3f} {ratio_error[level]:6.4f} {forward_text}")
    forward_text = ("" if forward is None else f"; forward MSE at sigma {sigmas[0]:.0f} / peak = "
                    f"{forward[0] / forward.max():.3f} (target <= 0.1)")
    worst = ratio.argmax()
    print(f"worst ratio {ratio[worst]:.3f} +- {ratio_error[worst]:.4f} at sigma {sigmas[worst]:.3f} (target <= 1.02)"
          f"{forward_text}", flush=True)


def print_curve_row(spec, sigmas, ratio, ratio_error, forward, header: bool) -> None:
    """One line of ratios per network, the worst with its standard error; forward None: not computed
    (--sigma-range)."""
    if header:
        print("ratio network / min(optimal, gaussian) per sigma; worst +- its standard error; forward end / peak")
        labels = "".join(f"{format(s, '.3g')[:6]:>7s}" for s in sigmas.tolist())  # 6 characters: a space between
        print(f"{'network':<40s}" + labels + "  worst     +-  f_end/pk")
    forward_text = f"{forward[0] / forward.max():7.3f}" if forward is not None else f"{'-':>7s}"
    worst = ratio.argmax()
    print(f"{spec[-40:]:<40s}" + "".join(f"{r:7.3f}" for r in ratio.tolist())
          + f" {ratio[worst]:6.3f} {ratio_error[worst]:6.4f} {forward_text}", flush=True)


if __name__ == "__main__":
    main()
