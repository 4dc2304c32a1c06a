"""The Gaussian-structure study end to end on tiny U-Nets (real architecture and checkpoint format, random
weights) and a 1x8x8 .npz dataset, with its key numbers checked against float64 references written here."""

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomli_w
import torch

from denoiserlab.analysis import distill_linear, linearity_score
from denoiserlab.analysis.noisy_inputs import noisy_batches
from denoiserlab.cli import gaussian_study as cli
from denoiserlab.config import from_dict, load_toml, to_dict
from denoiserlab.analysis import memorization_verdict
from denoiserlab.data import load
from denoiserlab.denoisers import GaussianDenoiser
from denoiserlab.diffusion import edm_sigmas, standard_noise
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.networks.loaders import load as load_network
from denoiserlab.studies.common.cache import read_value
from denoiserlab.studies.gaussian_structure import run_gaussian_study
from denoiserlab.report.gaussian_structure_figures import loss_curves_figure, sweep_groups
from denoiserlab.studies.gaussian_structure.config import DistillationConfig, GaussianStudyConfig, ScoreErrorConfig
from denoiserlab.studies.gaussian_structure.inputs import load_study_network
from denoiserlab.studies.gaussian_structure.measures import distill_at_sigma, samples_similarity
from denoiserlab.studies.gaussian_structure.results import distillation_summary, plain

TINY_UNET = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], channels_per_head=8,
                 dropout=0.0)
TOP_LEVEL_KEYS = {"study", "version", "command", "config", "sigmas", "networks", "linearity", "distillation",
                  "score_error", "sampling", "generalization", "strong_generalization", "sweeps", "paper", "checks",
                  "timings_s", "stages"}


def tiny_network(path: Path, training_data: dict | None, seed: int) -> Path:
    """A 1x8x8 U-Net with perturbed random weights (the zero-initialised output layer would make it linear)."""
    torch.manual_seed(seed)
    denoiser = build_denoiser("unet", 1, 8, TINY_UNET, training_data=training_data)
    with torch.no_grad():
        for parameter in denoiser.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return save_checkpoint(path, denoiser.eval())


def study_table(root: Path) -> dict:
    return {
        "networks": [{"name": "a", "path": str(root / "a")}, {"name": "b", "path": str(root / "b")}],
        "sigmas": {"steps": 3},
        "linearity": {"n_pairs": 8, "alphas": [0.3]},
        "distillation": {"n_samples": 160, "top_k": 4, "batch_size": 40},  # >= 2 (D + 1): split-half too
        "score_error": {"n_samples": 16, "batch_size": 8},
        "sampling": {"n_samples": 4},
        "generalization": {"k": 8, "steps": 3, "sampler": "euler", "batch_size": 5},
        "strong_generalization": {"pairs": [["a", "b"]]},
        "sweeps": {"entries": [{"path": str(root / "a"), "kind": "n_train", "value": 40},
                               {"path": str(root / "b"), "kind": "n_train", "value": 20}]},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaussian_study")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 8x8 convolutions: thread start-up costs far more than the work on a busy CPU
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DENOISERLAB_CACHE", str(root / "cache"))
        pixels = (torch.rand(52, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        np.savez(root / "tiny.npz", train_images=pixels[:40].numpy(), test_images=pixels[40:].numpy())
        source = str(root / "tiny.npz")
        tiny_network(root / "a", {"source": source}, seed=0)
        tiny_network(root / "b", {"source": source, "subset": 20, "seed": 1}, seed=1)
        config = from_dict(GaussianStudyConfig, study_table(root))
        results = run_gaussian_study(config, root / "out", command="test", progress=False)
        yield SimpleNamespace(root=root, out=root / "out", config=config, results=results, source=source)
    torch.set_num_threads(threads)


def train_images(study, **options) -> torch.Tensor:
    return load(study.source, **options).as_float()


def explicit_gaussian_matrix(images: torch.Tensor, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(W, mu) of the Gaussian denoiser from numpy's float64 covariance (divide by N) and eigh."""
    flat = images.reshape(len(images), -1).double().numpy()
    mean = flat.mean(0)
    covariance = (flat - mean).T @ (flat - mean) / len(flat)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    eigvals = eigvals.clip(min=0)
    return (eigvecs * (eigvals / (eigvals + sigma**2))) @ eigvecs.T, mean


def all_numbers(value, path=""):
    """Yield (path, number) for every number in a nested JSON value (None reported as NaN)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from all_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from all_numbers(item, f"{path}[{index}]")
    elif value is None:
        yield path, math.nan
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_results_json_has_the_documented_keys_and_finite_numbers(study):
    results = json.loads((study.out / "results.json").read_text())
    assert set(results) == TOP_LEVEL_KEYS
    sigmas = results["sigmas"]
    assert np.allclose(sigmas, edm_sigmas(3).numpy())
    for section in ("distillation", "score_error", "sampling", "generalization"):
        assert set(results[section]) == {"a", "b"}
    assert set(results["linearity"]["scores"]) == {"a", "b", "denoiser:gaussian", "denoiser:optimal"}
    scores = results["linearity"]["scores"]["a"]
    assert len(scores["cosine"]) == len(scores["nmse"]) == 3 and np.shape(scores["sweep_cosine"]) == (1, 3)
    distillation = results["distillation"]["a"]
    assert np.shape(distillation["alignment"]) == (3, 4) and np.shape(distillation["spectrum_linear"]) == (3, 64)
    assert set(results["score_error"]["a"]) == {"linear", "gaussian", "optimal"}
    assert len(results["sampling"]["a"]["nmse"]) == 4 and results["sampling"]["a"]["sigmas"][-1] == 0
    assert results["generalization"]["a"]["k"] == 8
    assert [row["n_train"] for row in results["sweeps"]["entries"]] == [40, 20]
    for path, number in all_numbers(results):
        if path != ".strong_generalization[0].feature_cosine":  # null: no feature model configured
            assert math.isfinite(number), path


def test_report_is_self_contained_and_embeds_every_figure(study):
    page = (study.out / "report.html").read_text()
    figures = list((study.out / "figures").glob("*.png"))
    assert len(figures) >= 10
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert 'src="figures/' not in page
    assert "(1 - alpha - beta) c" in page and "0.96" in page and "0.6" in page
    names = {path.name for path in figures}
    assert {"linearity.png", "weight-nmse.png", "spectra-a.png", "vectors-a.png", "score-error.png",
            "trajectory-nmse.png", "trajectory-a.png", "sweep-n_train.png", "strong-a-b.png"} <= names


def test_stored_linearity_equals_linearity_score_called_directly(study):
    """Same pairs and noise; the study batches all alphas together, so equal up to float32 rounding."""
    network = load_network(study.root / "a")
    images, config = train_images(study), study.config.linearity
    stored = study.results["linearity"]["scores"]
    for level, sigma in enumerate(edm_sigmas(3).tolist()):
        for metric in ("cosine", "nmse"):
            direct = linearity_score(network, images, sigma, config.n_pairs, config.alpha, config.seed, metric)
            assert stored["a"][metric][level] == pytest.approx(direct, rel=1e-5)
            swept = linearity_score(network, images, sigma, config.n_pairs, 0.3, config.seed, metric)
            assert stored["a"][f"sweep_{metric}"][0][level] == pytest.approx(swept, rel=1e-5)
        gaussian = linearity_score(GaussianDenoiser(images, cache=False), images, sigma, config.n_pairs,
                                   config.alpha, config.seed)
        assert stored["denoiser:gaussian"]["cosine"][level] == pytest.approx(gaussian, rel=1e-6)


def test_gaussian_denoiser_is_affine_not_linear(study):
    """D(x) = A x + c: the mismatch is (1 - a - b) c, so the NMSE form tends to (1 - a - b)^2 / (a + b)^2 at large
    sigma (A -> 0, every output -> mu) while the cosine stays just below 1 in the middle."""
    table, alpha = study.results["linearity"]["scores"]["denoiser:gaussian"], study.config.linearity.alpha
    beta = math.sqrt(1 - alpha**2)
    assert table["nmse"][0] == pytest.approx((1 - alpha - beta) ** 2 / (alpha + beta) ** 2, rel=0.02)
    assert 0.9 < table["cosine"][1] < 1 - 1e-4


def test_distillation_matches_numpy_least_squares_and_explicit_gaussian(study):
    """Level 1: lstsq of the augmented design on the same noisy draw vs the explicit Gaussian matrix."""
    config, level = study.config.distillation, 1
    sigma = float(edm_sigmas(3)[level])
    network, images = load_network(study.root / "a"), train_images(study)
    inputs = torch.cat(list(noisy_batches(images, sigma, config.n_samples, config.batch_size, config.seed)))
    with torch.no_grad():
        targets = network(inputs, sigma).reshape(len(inputs), -1).double().numpy()
    design = np.concatenate([inputs.reshape(len(inputs), -1).double().numpy(), np.ones((len(inputs), 1))], 1)
    weight = np.linalg.lstsq(design, targets, rcond=None)[0][:-1].T
    half = len(inputs) // 2
    first, second = (np.linalg.lstsq(design[rows], targets[rows], rcond=None)[0][:-1].T
                     for rows in (slice(0, half), slice(half, 2 * half)))
    gaussian, _ = explicit_gaussian_matrix(images, sigma)
    stored = study.results["distillation"]["a"]
    expected_nmse = ((weight - gaussian) ** 2).sum() / (gaussian**2).sum()
    assert stored["weight_nmse"][level] == pytest.approx(expected_nmse, rel=1e-6)
    split_half = ((first - gaussian) * (second - gaussian)).sum() / (gaussian**2).sum()
    assert stored["weight_nmse_split_half"][level] == pytest.approx(split_half, rel=1e-6)
    coefficients = np.linalg.lstsq(design, targets, rcond=None)[0]
    n, dim = design.shape[0], design.shape[1] - 1
    residual = ((design @ coefficients - targets) ** 2).mean() * n / (n - dim - 1)  # unbiased residual variance
    covariance_inverse_trace = np.trace(np.linalg.inv(np.cov(images.flatten(1).double().numpy().T, bias=True)
                                                      + sigma**2 * np.eye(dim)))
    expected_noise = dim * residual * covariance_inverse_trace / (n - dim - 1) / (gaussian**2).sum()
    assert stored["weight_nmse_noise_predicted"][level] == pytest.approx(expected_noise, rel=1e-5)
    assert stored["rmse_noise_predicted"][level] == pytest.approx(math.sqrt(dim * residual / (n - dim - 1)), rel=1e-5)
    assert np.allclose(stored["spectrum_linear"][level], np.linalg.svd(weight, compute_uv=False), atol=1e-8)
    left, _, _ = np.linalg.svd(weight)
    left_gaussian, _, _ = np.linalg.svd(gaussian)
    cosines = np.abs((left[:, :4] * left_gaussian[:, :4]).sum(0))
    assert np.allclose(stored["alignment"][level], cosines, atol=1e-6)


def test_score_error_vs_gaussian_matches_a_loop(study):
    config, level = study.config.score_error, 2
    sigma = float(edm_sigmas(3)[level])
    network, images = load_network(study.root / "b"), train_images(study, subset=20, seed=1)
    gaussian, mean = explicit_gaussian_matrix(images, sigma)
    total = 0.0
    for x in noisy_batches(images, sigma, config.n_samples, config.batch_size, config.seed):
        with torch.no_grad():
            outputs = network(x, sigma).reshape(len(x), -1).double().numpy()
        for row, flat in zip(outputs, x.reshape(len(x), -1).double().numpy()):
            reference = mean + gaussian @ (flat - mean)
            total += math.sqrt(((row - reference) ** 2).mean())
    assert study.results["score_error"]["b"]["gaussian"][level] == pytest.approx(total / config.n_samples, rel=1e-5)


def test_trajectory_nmse_matches_a_float64_recomputation(study):
    """Network Euler steps in float64 vs the closed form U diag(sqrt((s + sigma^2) / (s + sigma_T^2))) U^T."""
    network = load_network(study.root / "a").double()
    images = train_images(study)
    flat = images.reshape(len(images), -1).double().numpy()
    mean = flat.mean(0)
    eigvals, eigvecs = np.linalg.eigh((flat - mean).T @ (flat - mean) / len(flat))
    eigvals = eigvals.clip(min=0)
    grid = [*edm_sigmas(3).tolist(), 0.0]
    noise = standard_noise((study.config.sampling.n_samples, 1, 8, 8), study.config.sampling.seed).double()
    x, expected = noise * grid[0], [0.0]
    start = x.reshape(len(x), -1).numpy() - mean
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        with torch.no_grad():
            denoised = network(x, sigma)
        x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * (x - denoised) / sigma
        gains = np.sqrt((eigvals + sigma_next**2) / (eigvals + grid[0] ** 2))
        closed = mean + ((start @ eigvecs) * gains) @ eigvecs.T  # [B, D]
        error = ((x.reshape(len(x), -1).numpy() - closed) ** 2).sum(1) / (closed**2).sum(1)
        expected.append(error.mean())
    assert np.allclose(study.results["sampling"]["a"]["nmse"], expected, rtol=1e-4, atol=1e-8)


def test_generalization_score_matches_a_loop_over_the_training_set(study):
    arrays, _ = read_value(study.out / "arrays.safetensors")  # safetensors + JSON: nothing to unpickle
    samples = arrays["networks"]["a"]["samples"]
    assert len(samples) == study.config.generalization.k
    train = train_images(study).reshape(40, -1).double()
    ratios, copies = [], []
    for sample in samples.reshape(len(samples), -1).double():
        distances = sorted(float((sample - image).norm()) for image in train)
        ratios.append(distances[0] / float(sample.norm()))
        copies.append(distances[0] / distances[1] < 1 / 3)
    assert study.results["generalization"]["a"]["score"] == pytest.approx(np.mean(ratios), rel=1e-9)
    assert study.results["generalization"]["a"]["memorized_fraction"] == pytest.approx(np.mean(copies))
    # the same checkpoint as the first sweep entry: the same samples, training set and score
    assert study.results["sweeps"]["entries"][0]["generalization_score"] == pytest.approx(np.mean(ratios), rel=1e-9)


def test_generalization_is_calibrated_by_held_out_images(study):
    """heldout_score is eq. 14 of the test split (8 = k images) against the training set, by a loop; the
    calibrated score divides by it; the verdict agrees with the copy fraction (analysis.memorization_verdict)."""
    train = train_images(study).reshape(40, -1).double()
    held_out = load(study.source, split="test").as_float()[:8].reshape(8, -1).double()
    ratios = [min(float((image - row).norm()) for row in train) / float(image.norm()) for image in held_out]
    for block in (study.results["generalization"]["a"], study.results["checks"]["a"]):
        assert block["heldout_score"] == pytest.approx(np.mean(ratios), rel=1e-9)
        score = block.get("score", block.get("generalization_score"))
        assert block["calibrated_score"] == pytest.approx(score / np.mean(ratios), rel=1e-12)
        assert block["verdict"] == memorization_verdict(block["memorized_fraction"], block["calibrated_score"])
        assert block["generalizes"] == (block["verdict"] == "generalizes")
        assert block["paper_threshold_generalizes"] == (score > 0.6)
    for entry in study.results["sweeps"]["entries"]:
        assert entry["verdict"] in ("memorizes", "partly memorizes", "generalizes")


def test_strong_generalization_compares_samples_from_the_same_noise(study):
    arrays, _ = read_value(study.out / "arrays.safetensors")  # safetensors + JSON: nothing to unpickle
    a, b = (arrays["networks"][name]["samples"].reshape(8, -1).double() for name in ("a", "b"))
    cosines = [float(x @ y / (x.norm() * y.norm())) for x, y in zip(a, b)]
    nmse = [float((x - y).pow(2).sum() / y.pow(2).sum()) for x, y in zip(a, b)]
    row = study.results["strong_generalization"][0]
    assert (row["a"], row["b"]) == ("a", "b")
    assert row["pixel_cosine"] == pytest.approx(np.mean(cosines), rel=1e-9)
    assert row["nmse"] == pytest.approx(np.mean(nmse), rel=1e-9)


def test_cli_rerun_loads_finished_stages_and_recomputes_a_deleted_one(study, tmp_path):
    config_path = tmp_path / "study.toml"
    config_path.write_text(tomli_w.dumps(to_dict(study.config)))
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    for stage in (study.out / "stages").glob("distillation-a-1-*.safetensors"):
        stage.unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DENOISERLAB_CACHE", str(study.root / "cache"))
        args = parser.parse_args(["gaussian-study", str(config_path), "--out", str(study.out), "--no-progress"])
        args.func(args)
    rerun = json.loads((study.out / "results.json").read_text())
    assert rerun["stages"]["computed"] == ["distillation-a-1"]
    assert len(rerun["stages"]["loaded"]) == len(study.results["stages"]["computed"]) - 1
    for section in ("linearity", "distillation", "score_error", "sampling", "generalization", "sweeps"):
        assert rerun[section] == study.results[section], section


def test_gradient_descent_distillation_matches_distill_linear_and_keeps_its_losses(study, tmp_path):
    """The study's Adam fit at each sigma is distill_linear's with the rate divided by sqrt(1 + sigma^2)."""
    network, images = load_network(study.root / "a"), train_images(study)
    config = DistillationConfig(method="gd", n_samples=64, batch_size=32, steps=30, learning_rate=1e-2, top_k=2)
    tables = []
    for sigma in (80.0, 0.5):
        table = distill_at_sigma(network, GaussianDenoiser(images, cache=False), images, sigma, config,
                                 ScoreErrorConfig(n_samples=8))
        weight, _, losses = distill_linear(network, images, sigma, "gd", 64, 0, 32, 30, 1e-2 / math.sqrt(1 + sigma**2),
                                           return_losses=True)
        gaussian, _ = explicit_gaussian_matrix(images, sigma)
        expected = ((weight.numpy() - gaussian) ** 2).sum() / (gaussian**2).sum()
        assert table["weight_nmse"] == pytest.approx(expected, rel=1e-6)
        assert torch.equal(table["losses"], losses) and losses[-1] < losses[0]
        assert math.isnan(table["weight_nmse_split_half"])  # split-half is a least-squares estimate only
        tables.append(table)
    summary = distillation_summary(tables, "gd", 64, torch.tensor([80.0, 0.5]))
    assert summary["loss_curves"].shape == (2, 30)
    assert torch.isnan(summary["weight_nmse_noise_predicted"]).all()  # a least-squares prediction only
    results = {"sigmas": [80.0, 0.5], "distillation": {"a": plain(summary)}}
    assert loss_curves_figure(results, "a", tmp_path / "loss.png").is_file()


def test_a_sweeps_only_study_reports_the_sweep(study, tmp_path):
    table = {"sigmas": {"steps": 3}, "generalization": {"k": 4, "steps": 2, "sampler": "euler"},
             "score_error": {"n_samples": 8},
             "sweeps": {"entries": [{"path": str(study.root / "b"), "kind": "width", "value": 8},
                                    {"path": str(study.root / "a"), "kind": "width", "value": 4, "label": "A"}],
                        "sigma_indices": [0, -1]},
             "strong_generalization": {"pairs": [["width=8", "A"]]}}  # pairs may name sweep entries
    results = run_gaussian_study(from_dict(GaussianStudyConfig, table), tmp_path, progress=False)
    assert results["checks"] == {} and results["linearity"]["scores"] == {}
    row = results["sweeps"]["entries"][0]
    assert row["label"] == "width=8" and row["n_train"] == 20 and len(row["score_error_gaussian"]) == 2
    assert results["sweeps"]["sigmas"] == [80.0, pytest.approx(0.002)]
    assert (tmp_path / "figures" / "sweep-width.png").is_file() and (tmp_path / "report.html").is_file()
    pair = results["strong_generalization"][0]
    assert (pair["a"], pair["b"], pair["n_samples"]) == ("width=8", "A", 4)
    assert (tmp_path / "figures" / "strong-width=8-A.png").is_file()


def test_feature_cosine_of_samples_uses_the_feature_model():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.rand(5, 1, 8, 8, generator=generator), torch.rand(5, 1, 8, 8, generator=generator)
    projection = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    table = samples_similarity(a, b, lambda images: images.reshape(len(images), -1).double() @ projection)
    for row in range(5):
        fa, fb = a[row].reshape(-1).double() @ projection, b[row].reshape(-1).double() @ projection
        assert table["feature_cosine"][row] == pytest.approx(float(fa @ fb / (fa.norm() * fb.norm())), rel=1e-9)
    assert "feature_cosine" not in samples_similarity(a, b, None)


def test_a_network_without_recorded_training_data_needs_a_data_table(tmp_path):
    tiny_network(tmp_path / "net", None, seed=0)
    with pytest.raises(DenoiserLabError, match="does not record its training data"):
        load_study_network("net", str(tmp_path / "net"), False, {}, None, "cpu", {})
    with pytest.raises(DenoiserLabError, match="shipped.*nothing"):
        load_study_network("net", "shipped:nothing", False, {}, None, "cpu", {})


def test_config_errors_name_the_key():
    with pytest.raises(DenoiserLabError, match="unknown key"):
        from_dict(GaussianStudyConfig, {"networks": [{"name": "a", "path": "x"}], "linearty": {}})
    with pytest.raises(DenoiserLabError, match="sweeps.entries labels"):
        from_dict(GaussianStudyConfig, {"sweeps": {"entries": [{"path": "x", "kind": "kimg", "value": 1}] * 2}})
    with pytest.raises(DenoiserLabError, match="strong_generalization.pairs"):
        from_dict(GaussianStudyConfig, {"networks": [{"name": "a", "path": "x"}],
                                        "strong_generalization": {"pairs": [["a", "c"]]}})
    with pytest.raises(DenoiserLabError, match="alpha"):
        from_dict(GaussianStudyConfig, {"networks": [{"name": "a", "path": "x"}], "linearity": {"alphas": [1.0]}})
    with pytest.raises(DenoiserLabError, match="at least one"):
        from_dict(GaussianStudyConfig, {})


def test_demo_config_loads_with_the_papers_sigma_grid():
    config = load_toml(GaussianStudyConfig, Path(__file__).parents[1] / "configs" / "gaussian-demo.toml")
    paper = [80.0, 42.415, 21.108, 9.723, 4.06, 1.501, 0.469, 0.116, 0.020, 0.002]
    assert np.allclose(config.sigmas.grid().numpy(), paper, rtol=2e-3, atol=1e-3)


def test_sweep_entries_sharing_a_checkpoint_share_its_stages(study, tmp_path):
    entry = {"path": str(study.root / "b"), "kind": "kimg"}
    table = {"sigmas": {"steps": 3}, "generalization": {"k": 4, "steps": 2, "sampler": "euler"},
             "score_error": {"n_samples": 8},
             "sweeps": {"entries": [{**entry, "value": 1}, {**entry, "value": 2, "kind": "width"}]}}
    results = run_gaussian_study(from_dict(GaussianStudyConfig, table), tmp_path, progress=False)
    first, second = results["sweeps"]["entries"]
    assert first["generalization_score"] == second["generalization_score"]
    computed = results["stages"]["computed"]
    assert sum(stage.startswith("samples-sweep") for stage in computed) == 1


def test_sweep_groups_hold_the_other_quantity_fixed():
    rows = [{"kind": "width", "value": 32, "n_train": 16, "n_parameters": 1.7e6},
            {"kind": "width", "value": 8, "n_train": 16, "n_parameters": 1.1e5},
            {"kind": "width", "value": 16, "n_train": 64, "n_parameters": 4.4e5},
            {"kind": "n_train", "value": 64, "n_train": 64, "n_parameters": 4.4e5}]
    groups = sweep_groups(rows, "width")
    assert {name: [row["value"] for row in group] for name, group in groups.items()} == {"N=16": [8, 32],
                                                                                         "N=64": [16]}
    assert list(sweep_groups(rows, "n_train")) == ["0.44 M parameters"]


def test_sweeps_take_their_own_sample_count_and_pairs_compare_the_shared_noise(study, tmp_path):
    table = {"networks": [{"name": "a", "path": str(study.root / "a")}], "sigmas": {"steps": 2},
             "linearity": {"n_pairs": 2, "alphas": [0.3]}, "distillation": {"n_samples": 70, "top_k": 2},
             "score_error": {"n_samples": 4}, "sampling": {"n_samples": 2},
             "generalization": {"k": 4, "steps": 2, "sampler": "euler"},
             "sweeps": {"k": 2, "entries": [{"path": str(study.root / "b"), "kind": "n_train", "value": 20}]},
             "strong_generalization": {"pairs": [["a", "n_train=20"]]}}
    results = run_gaussian_study(from_dict(GaussianStudyConfig, table), tmp_path, progress=False)
    assert results["generalization"]["a"]["k"] == 4
    assert results["strong_generalization"][0]["n_samples"] == 2  # the first two samples of the shared noise
    sweep_samples = read_value(tmp_path / "arrays.safetensors")[0]["sweeps"][0]["samples"]
    assert len(sweep_samples) == 2
