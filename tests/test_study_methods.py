"""Studies read the registry: a registered denoiser reaches every table of both studies without study code naming
it; fitting of every tunable kind, Kamb & Ganguli's score-cosine calibration, the sample Pearson r and the ranking
against slow float64 references written here."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from denoiserlab.config import from_dict
from denoiserlab.denoisers import REGISTRY, tunable
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.studies.common.inputs import TrainingData
from denoiserlab.studies.common.methods import build_method, method_spec
from denoiserlab.studies.gaussian_structure import GaussianStudyConfig, run_gaussian_study
from denoiserlab.studies.locality import LocalityStudyConfig, run_locality_study
from denoiserlab.studies.locality.fitting import (
    best_per_sigma,
    median_score_cosine,
    most_similar_per_sigma,
    sweep_table,
)
from denoiserlab.studies.locality.heatmaps import save_heatmaps_file
from denoiserlab.studies.locality.metrics import pearson_summary
from denoiserlab.studies.locality.ranking import ranking_table
from denoiserlab.studies.locality.sets import forward_set, outputs_on

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src" / "denoiserlab"
NEW_METHOD = "gaussian_mixture"  # stands for "a method added with one file and one registry line"


def lower_median(values: list[float]) -> float:
    return statistics.median_low(values)


# --- a registered denoiser reaches both studies -------------------------------------------------------------------


def test_study_code_never_names_the_method():
    for folder in ("studies", "report"):
        for path in (SOURCE_ROOT / folder).rglob("*.py"):
            assert NEW_METHOD not in path.read_text(), path


def tiny_mixer(root: Path) -> Path:
    torch.manual_seed(0)
    denoiser = build_denoiser("mixer", 1, 8, overrides=dict(hidden_size=16, depth=1, patch_size=2)).eval()
    with torch.no_grad():
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return save_checkpoint(root / "mixer", denoiser, preset="mixer")


@pytest.fixture(scope="module")
def locality(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    images = (np.random.default_rng(1).random((10, 8, 8)) * 255).astype(np.uint8)
    np.savez(root / "tiny.npz", images=images)
    table = {"data": {"source": str(root / "tiny.npz")},
             "networks": [{"name": "mixer", "path": str(tiny_mixer(root))}],
             "denoisers": {"optimal": {}, NEW_METHOD: {"components": 2}, "cfdm": {"candidates": [0.0, 0.5]}},
             "sigmas": {"steps": 3},
             "evaluation": {"forward_pairs": 3, "reverse_trajectories": 3, "batch_size": 8},
             "heatmaps": {"n_samples": 1},
             "fitting": {"pairs": 3, "trajectories": 2}}
    results = run_locality_study(from_dict(LocalityStudyConfig, table), root / "out", progress=False)
    return SimpleNamespace(root=root, table=table, results=results, out=root / "out")


def test_a_registered_denoiser_appears_in_every_locality_table(locality):
    results = locality.results
    for process in ("forward", "reverse"):
        for table in ("mse", "mse_vs_optimal", "r2", "pearson_r"):
            assert NEW_METHOD in results[process][table]["mixer"], (process, table)
        assert NEW_METHOD in results["ranking"][process]["mixer"]["at_peak"]
        assert all(NEW_METHOD in order for order in results["ranking"][process]["mixer"]["per_sigma"])
        assert all(NEW_METHOD in span["order"] for span in results["ranking"][process]["mixer"]["by_range"].values())
    for metric in results["similarity"]:
        assert NEW_METHOD in results["similarity"][metric]["mixer"]
    assert NEW_METHOD in results["sample_pearson_r"]["mixer"]
    assert NEW_METHOD in results["nearest_neighbour"]["mixer"] and NEW_METHOD in results["memorized_fraction"]["mixer"]
    assert NEW_METHOD in results["checks"]["mixer"]["ranking_at_peak_forward"]
    assert list(locality.out.glob(f"stages/samples-{NEW_METHOD}-*.safetensors"))
    assert "samples-gaussian_mixture" in [name for name in results["stages"]]
    page = (locality.out / "report.html").read_text()
    assert page.count(NEW_METHOD) >= 5


def test_a_tunable_method_is_fitted_to_the_network_on_both_processes(locality):
    results = locality.results
    methods = results["fitting"]["mixer"]["methods"]
    assert list(methods) == ["cfdm"] and methods["cfdm"]["values"] == [0.0, 0.5]
    assert results["fitting"]["mixer"]["process"] == "reverse"
    for process in ("forward", "reverse"):
        table = methods["cfdm"][process]
        assert np.shape(table["mse_vs_network"]) == np.shape(table["score_cosine_median"]) == (2, 3)
        # smoothing 0 is the optimal denoiser
        assert max(table["mse_vs_optimal"][0]) < 1e-10
        best = [methods["cfdm"]["values"][i] for i in np.argmin(table["mse_vs_network"], axis=0)]
        assert results["fits"]["cfdm"]["mixer"][f"mse_{process}"] == best
    cosine = np.array(methods["cfdm"]["reverse"]["score_cosine_median"])
    assert results["calibrated_schedules"]["cfdm"]["mixer"] == [[0.0, 0.5][i] for i in np.argmax(cosine, axis=0)]
    assert results["fitted_schedules"]["cfdm"]["mixer"] == results["fits"]["cfdm"]["mixer"]["mse_reverse"]
    used = results["schedules_used"]["cfdm"]["mixer"]
    assert used["source"] == "fitted" and used["values"] == results["fitted_schedules"]["cfdm"]["mixer"]
    for suffix in ("", "-forward", "-reverse", "-calibrated"):
        assert (locality.out / "schedules" / f"mixer-cfdm{suffix}.toml").is_file()


def test_calibrated_schedule_and_fixed_value_are_used_by_the_comparison(locality, tmp_path):
    table = dict(locality.table, denoisers={"optimal": {}, "cfdm": {"candidates": [0.0, 0.5],
                                                                     "schedule": "calibrated"},
                                            "ls": {"patch_size": 3, "train_subset": 4}})
    results = run_locality_study(from_dict(LocalityStudyConfig, table), tmp_path / "out", write_report=False,
                                 progress=False)
    used = results["schedules_used"]["cfdm"]["mixer"]
    assert used["source"] == "calibrated" and used["values"] == results["calibrated_schedules"]["cfdm"]["mixer"]
    assert "ls" not in results["fitting"]["mixer"]["methods"] and "ls" not in results["schedules_used"]
    assert results["methods"]["ls"] == {"tunable": "patch_size", "fixed": 3, "schedule": None, "train_subset": 4,
                                        "per_network": False}
    assert "ls" in results["forward"]["mse"]["mixer"]


def test_config_checks_study_keys_before_any_data():
    base = {"networks": [{"name": "a", "path": "x"}]}
    for denoisers, message in (({"optimal": {}, "els": {"candidates": [3, 4]}}, "denoisers.els: patch size must be"),
                               ({"optimal": {}, "gaussian": {"schedule": "cifar10"}}, "only apply to denoisers"),
                               ({"optimal": {}, "cfdm": {"smoothing": 0.1, "schedule": "fitted"}}, "fixes the value"),
                               ({"optimal": {}, "knn": {"train_subset": 0}}, "train_subset must be")):
        with pytest.raises(DenoiserLabError, match=message):
            from_dict(LocalityStudyConfig, {**base, "denoisers": denoisers})
    config = from_dict(LocalityStudyConfig, {**base, "denoisers": {"optimal": {}}, "all_denoisers": True})
    assert list(config.methods())[:1] == ["optimal"] and set(config.methods()) == set(REGISTRY)


def test_studies_keep_eigendecompositions_in_the_disk_cache_unless_configured_off(tiny_train, tmp_path, monkeypatch):
    # the denoisers write nothing to disk by default; studies and demos ask for the cache explicitly
    from denoiserlab.data import ImageSet, float_to_uint8
    from denoiserlab.studies.common.methods import with_disk_cache

    assert with_disk_cache("gaussian", {"rank": 3}) == {"rank": 3, "cache": True}
    assert with_disk_cache("data_locality", {"cache": False}) == {"cache": False}
    assert with_disk_cache("optimal", {}) == {}  # no such option: nothing added
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    data = TrainingData(ImageSet(float_to_uint8(tiny_train), None, "tiny"), tiny_train, False, {"data": "tiny"})
    assert build_method(method_spec("gaussian_mixture", {"components": 2}), data).config.cache
    assert not build_method(method_spec("gaussian", {"cache": False}), data).config.cache
    assert len(list((tmp_path / "gaussian").glob("*.safetensors"))) == 2  # the mixture's two components


def test_a_registered_denoiser_appears_in_the_gaussian_linearity_figure(tmp_path, monkeypatch):
    pixels = (torch.rand(30, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    np.savez(tmp_path / "tiny.npz", train_images=pixels[:24].numpy(), test_images=pixels[24:].numpy())
    torch.manual_seed(0)
    unet = build_denoiser("unet", 1, 8, dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                                             channels_per_head=8, dropout=0.0),
                          training_data={"source": str(tmp_path / "tiny.npz")})
    save_checkpoint(tmp_path / "net", unet.eval())
    heatmaps = torch.rand(2, 8, 8, 8, 8, generator=torch.Generator().manual_seed(3)) + 0.01
    save_heatmaps_file(tmp_path / "maps.npz", {"sigmas": edm_sigmas(2), "n_samples": 1, "same_channel": heatmaps},
                       "test")
    table = {"networks": [{"name": "a", "path": str(tmp_path / "net"), "heatmaps": str(tmp_path / "maps.npz")}],
             "all_denoisers": True, "denoisers": {"els": {"train_subset": 6}, NEW_METHOD: {"components": 2}},
             "sigmas": {"steps": 2}, "linearity": {"n_pairs": 4, "alphas": [0.3], "denoiser_pairs": 2},
             "distillation": {"n_samples": 70, "top_k": 2}, "score_error": {"n_samples": 4},
             "sampling": {"n_samples": 2}, "generalization": {"k": 2, "steps": 2, "sampler": "euler"}}
    plotted = []
    from matplotlib.axes import Axes

    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *args, **kwargs: (plotted.append(kwargs.get("label")),
                                                                      original(self, *args, **kwargs))[1])
    results = run_gaussian_study(from_dict(GaussianStudyConfig, table), tmp_path / "out", progress=False)
    assert {f"denoiser:{name}" for name in REGISTRY} <= set(results["linearity"]["scores"])
    assert f"denoiser:{NEW_METHOD}" in plotted
    assert results["linearity"]["denoiser_pairs"] == 2 and results["linearity"]["skipped"] == {}
    assert results["linearity"]["denoiser_values"]["els"] == {"option": "patch_size", "value": 3, "source": "default"}
    assert (tmp_path / "out" / "arrays.safetensors").is_file() and not (tmp_path / "out" / "arrays.pt").exists()


# --- fitting, calibration and metrics against loops -----------------------------------------------------------------


def tiny_data(images: torch.Tensor) -> TrainingData:
    from denoiserlab.data.imageset import ImageSet, float_to_uint8

    imageset = ImageSet(float_to_uint8(images), None, "tiny")
    return TrainingData(imageset, imageset.as_float(), False, {"tiny": True})


def toy_network(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A fixed stand-in for a network: a blurred shrink of its input."""
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return blurred / (1 + sigma**2) ** 0.5


@pytest.mark.parametrize("name", sorted(name for name in REGISTRY if tunable(name) is not None))
def test_fitting_every_tunable_kind_matches_a_float64_loop(name, tiny_train):
    declared = tunable(name)
    data = tiny_data(tiny_train)
    sigmas = edm_sigmas(3)
    z = forward_set(data.images, sigmas, 3, seed=0)["z"]  # [L, M, 1, 6, 6]
    candidates = [value for value in declared.candidates if declared.kind != "patch_size" or value <= 5][:3]
    inputs = ({"heatmaps": torch.rand(3, 6, 6, 6, 6, generator=torch.Generator().manual_seed(4)) + 0.01,
               "heatmap_sigmas": sigmas} if declared.needs else None)
    spec = method_spec(name, {"candidates": candidates})
    network = torch.stack([toy_network(z[level], float(sigma)) for level, sigma in enumerate(sigmas)])
    outputs = [outputs_on(build_method(spec, data, value, inputs), z, sigmas, 8, progress=False)
               for value in candidates]
    table = sweep_table(outputs, {"network": network, "optimal": network}, z)
    reference = np.zeros((len(candidates), len(sigmas)))
    for row, value in enumerate(candidates):
        den = build_method(spec, data, value, inputs)
        for level, sigma in enumerate(sigmas.tolist()):
            errors = [((den(sample[None].double(), sigma)[0] - toy_network(sample[None].double(), sigma)[0]) ** 2)
                      .mean().item() for sample in z[level]]
            reference[row, level] = sum(errors) / len(errors)
    np.testing.assert_allclose(table["mse_vs_network"].numpy(), reference, rtol=1e-4, atol=1e-9)
    expected = [candidates[min(range(len(candidates)), key=lambda row: reference[row, level])]
                for level in range(len(sigmas))]
    assert best_per_sigma(torch.tensor(reference), candidates) == expected


def test_score_cosine_calibration_matches_a_loop():
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(4, 5, 1, 3, 3, generator=generator)
    network = torch.randn(4, 5, 1, 3, 3, generator=generator)
    outputs = [torch.randn(4, 5, 1, 3, 3, generator=generator) for _ in range(3)]
    values = [3, 5, 7]
    cosine = torch.stack([median_score_cosine(each, network, z) for each in outputs])
    for row, each in enumerate(outputs):
        for level in range(4):
            per_sample = []
            for sample in range(5):
                a = (each[level, sample].double() - z[level, sample].double()).flatten()
                b = (network[level, sample].double() - z[level, sample].double()).flatten()
                per_sample.append(float(a @ b / math.sqrt(float(a @ a) * float(b @ b))))
            assert cosine[row, level].item() == pytest.approx(lower_median(per_sample), rel=1e-12)
    expected = [values[max(range(3), key=lambda row: cosine[row, level].item())] for level in range(4)]
    assert most_similar_per_sigma(cosine, values) == expected


def test_sample_pearson_r_median_matches_a_loop():
    from denoiserlab.analysis import pearson_r

    generator = torch.Generator().manual_seed(6)
    samples, network = torch.randn(6, 1, 4, 4, generator=generator), torch.randn(6, 1, 4, 4, generator=generator)
    network = network + samples  # correlated
    per_seed = [float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])
                for a, b in zip(samples, network)]
    summary = pearson_summary(pearson_r(samples, network).tolist())
    assert summary["median"] == pytest.approx(lower_median(per_seed), rel=1e-6)
    assert summary["mean"] == pytest.approx(sum(per_seed) / 6, rel=1e-6)
    assert summary["r2_median"] == pytest.approx(lower_median([r * r for r in per_seed]), rel=1e-6)
    assert summary["n"] == 6


def test_ranking_orders_denoisers_per_sigma_peak_and_range():
    sigmas = [80.0, 20.0, 2.0, 0.1]
    mse = {"a": [1.0, 0.5, 0.3, 0.01], "b": [2.0, 0.1, 0.2, 0.02], "network:x": [0.0, 0.0, 0.0, 0.0]}
    table = ranking_table(mse, [0.1, 0.2, 0.5, 0.05], sigmas)
    assert table["per_sigma"] == [["a", "b"], ["b", "a"], ["b", "a"], ["a", "b"]]
    assert table["closest"] == ["a", "b", "b", "a"] and table["at_peak"] == ["b", "a"] and table["peak_sigma"] == 2.0
    high = table["by_range"]["high"]
    assert high["geometric_mean_mse"]["a"] == pytest.approx(math.sqrt(1.0 * 0.5))
    assert high["order"] == ["b", "a"]  # sqrt(2 * 0.1) = 0.45 < sqrt(1 * 0.5) = 0.71
    assert table["by_range"]["middle"]["order"] == ["b", "a"] and table["by_range"]["low"]["order"] == ["a", "b"]
