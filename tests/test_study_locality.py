"""The locality study end to end on a tiny 1x8x8 dataset with two tiny networks (real architectures, random
weights, saved as our checkpoints): results.json contract, numbers against slow references, report, resume, crash
safety and config errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from denoiserlab.cli import study as study_command
from denoiserlab.config import from_dict, load_toml
from denoiserlab.data import load
from denoiserlab.denoisers import load_schedule
from denoiserlab.denoisers.schedules import CIFAR10_THRESHOLDS
from denoiserlab.diffusion import standard_noise
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.networks.loaders import load as load_network
from denoiserlab.studies.common import cache as cache_module
from denoiserlab.studies.locality import stages as locality_stages
from denoiserlab.studies.common.cache import read_stage
from denoiserlab.studies.locality import run_locality_study
from denoiserlab.studies.locality.config import LocalityStudyConfig

STEPS, PAIRS, TRAJECTORIES = 3, 4, 4
CONTRACT_KEYS = {"sigmas", "forward", "reverse", "network_vs_optimal", "fitted_schedules", "similarity",
                 "nearest_neighbour", "timings_s"}


def tiny_network(folder: Path, architecture: str, overrides: dict, seed: int, channels: int = 1) -> Path:
    """A real architecture at a tiny size (channels x 8 x 8) with random (perturbed, so not zero-initialised)
    weights, saved."""
    torch.manual_seed(seed)
    denoiser = build_denoiser(architecture, channels, 8, overrides=overrides).eval()
    with torch.no_grad():
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return save_checkpoint(folder / architecture, denoiser, preset=architecture)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("locality")
    images = (np.random.default_rng(0).random((12, 8, 8)) * 255).astype(np.uint8)
    np.savez(root / "tiny.npz", images=images)
    mixer = tiny_network(root, "mixer", dict(hidden_size=16, depth=1, patch_size=2), seed=0)
    dit = tiny_network(root, "dit", dict(hidden_size=16, depth=1, num_heads=2, patch_size=2, dropout=0.0), seed=1)
    table = {"data": {"source": str(root / "tiny.npz"), "xflip": True},
             "networks": [{"name": "mixer", "path": str(mixer)}, {"name": "dit", "path": str(dit)}],
             "sigmas": {"steps": STEPS},
             "evaluation": {"forward_pairs": PAIRS, "reverse_trajectories": TRAJECTORIES, "batch_size": 8},
             "heatmaps": {"n_samples": 2},
             "fitting": {"pairs": 4, "patch_sizes": [1, 3, 5, 8], "thresholds": [0.5, 1.0]}}
    config_path = root / "study.toml"
    config_path.write_text(tomli_w.dumps(table))
    out = root / "out"
    run_cli([str(config_path), "--out", str(out)])
    return {"root": root, "table": table, "config_path": config_path, "out": out,
            "results": json.loads((out / "results.json").read_text())}


def run_cli(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser()
    study_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["study", *arguments])
    args.func(args)


def slow_optimal(z: torch.Tensor, sigma: float, train: torch.Tensor) -> torch.Tensor:
    """E[x0 | z] over the training images as a float64 loop over queries: softmax(-|z - x_n|^2 / 2 sigma^2)."""
    flat = train.double().flatten(1)
    outputs = []
    for query in z.double().flatten(1):
        logits = -((query - flat) ** 2).sum(1) / (2 * sigma**2)
        weights = torch.softmax(logits, 0)
        outputs.append((weights[:, None] * flat).sum(0))
    return torch.stack(outputs).reshape(z.shape)


def slow_mse_and_r2(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """MSE per element over all samples, and the mean over samples of 1 - SSE / sum (ref - mean ref)^2."""
    errors, r2 = [], []
    for a, b in zip(estimate.double(), reference.double()):
        sse = ((a - b) ** 2).sum().item()
        errors.append(sse / a.numel())
        r2.append(1 - sse / ((b - b.mean()) ** 2).sum().item())
    return sum(errors) / len(errors), sum(r2) / len(r2)


def stage_value(out: Path, name: str):
    suffix = len(".safetensors")
    (path,) = [p for p in (out / "stages").glob(f"{name}-*.safetensors") if p.name[len(name) + 1:-suffix].isalnum()]
    return read_stage(path)[0]


def test_results_hold_the_contract_keys_and_shapes(setup):
    results = setup["results"]
    assert CONTRACT_KEYS <= set(results)
    assert len(results["sigmas"]) == STEPS and results["sigmas"] == sorted(results["sigmas"], reverse=True)
    networks = ["mixer", "dit"]
    assert results["networks"] == networks
    methods = {"mixer": {"optimal", "gaussian", "pspc_square", "pspc_flex", "network:dit"},
               "dit": {"optimal", "gaussian", "pspc_square", "pspc_flex", "network:mixer"}}
    for process in ("forward", "reverse"):
        assert set(results["network_vs_optimal"][process]) == set(networks)
        for name in networks:
            assert set(results[process]["mse"][name]) == methods[name]
            assert set(results[process]["mse_vs_optimal"][name]) == methods[name] | {"network"}
            assert all(len(values) == STEPS for values in results[process]["mse"][name].values())
            for summary in results[process]["r2"][name].values():
                assert len(summary["mean"]) == len(summary["median"]) == STEPS
            assert len(results["network_vs_optimal"][process][name]) == STEPS
    for denoiser in ("pspc_square", "pspc_flex"):
        assert set(results["fitted_schedules"][denoiser]) == set(networks)
        assert all(len(values) == STEPS for values in results["fitted_schedules"][denoiser].values())
    assert set(results["similarity"]) == {"pixel_cosine", "ssim"}  # no feature model given
    assert results["feature_model"] is None
    for name in networks:
        assert set(results["similarity"]["ssim"][name]) == methods[name]
        assert set(results["nearest_neighbour"][name]) == methods[name] | {"network"}
        assert all(len(v) == TRAJECTORIES for v in results["similarity_per_sample"]["pixel_cosine"][name].values())
    assert results["timings_s"]["total"] > 0 and "heatmaps-mixer" in results["timings_s"]
    assert (setup["out"] / "config.toml").is_file()
    assert load_toml(LocalityStudyConfig, setup["out"] / "config.toml") == from_dict(LocalityStudyConfig, setup["table"])


def test_forward_network_vs_optimal_and_r2_match_a_slow_reference(setup):
    results, out = setup["results"], setup["out"]
    train = load(setup["table"]["data"]["source"]).as_float()
    train = torch.cat([train, train.flip(-1)])  # xflip = true: flips count as training images
    forward = stage_value(out, "forward_set")
    network = load_network(setup["table"]["networks"][0]["path"])
    for level, sigma in enumerate(results["sigmas"]):
        z, x0 = forward["z"][level], forward["x0"][level]
        assert all(any(torch.equal(image, candidate) for candidate in train) for image in x0)
        with torch.no_grad():
            net_out = network(z, sigma)
        optimal = slow_optimal(z, sigma, train)
        mse, _ = slow_mse_and_r2(net_out, optimal)
        _, r2_optimal_vs_net = slow_mse_and_r2(optimal, net_out)
        assert results["network_vs_optimal"]["forward"]["mixer"][level] == pytest.approx(mse, rel=1e-4, abs=1e-9)
        assert results["forward"]["mse"]["mixer"]["optimal"][level] == pytest.approx(mse, rel=1e-4, abs=1e-9)
        assert results["forward"]["r2"]["mixer"]["optimal"]["mean"][level] == pytest.approx(r2_optimal_vs_net,
                                                                                              rel=1e-4, abs=1e-6)


def test_reverse_set_is_the_network_heun_trajectory_from_shared_noise(setup):
    results, out = setup["results"], setup["out"]
    train = load(setup["table"]["data"]["source"]).as_float()
    train = torch.cat([train, train.flip(-1)])
    reverse = stage_value(out, "reverse_set-dit")
    noise = standard_noise((TRAJECTORIES, 1, 8, 8), 0)
    torch.testing.assert_close(reverse["z"][0], noise * results["sigmas"][0])
    network = load_network(setup["table"]["networks"][1]["path"])
    for level, sigma in enumerate(results["sigmas"]):
        with torch.no_grad():
            net_out = network(reverse["z"][level], sigma)
        torch.testing.assert_close(reverse["network"][level], net_out, rtol=1e-4, atol=1e-5)
        mse, _ = slow_mse_and_r2(net_out, slow_optimal(reverse["z"][level], sigma, train))
        assert results["network_vs_optimal"]["reverse"]["dit"][level] == pytest.approx(mse, rel=1e-3, abs=1e-8)


def test_fitting_tables_schedules_and_limits(setup):
    results, out = setup["results"], setup["out"]
    for name in ("mixer", "dit"):
        fitting = results["fitting"][name]
        assert fitting["patch_sizes"] == [1, 3, 5, 8]
        # PSPC-Square with s = H = W and PSPC-Flex with lambda = 1 (one full-image crop) are the optimal denoiser
        assert max(fitting["square_mse_vs_optimal"][-1]) < 1e-8
        assert max(fitting["flex_mse_vs_optimal"][-1]) < 1e-8
        for table, values, denoiser in (("square_mse_vs_network", "patch_sizes", "pspc_square"),
                                        ("flex_mse_vs_network", "thresholds", "pspc_flex")):
            best = np.argmin(np.array(fitting[table]), axis=0)
            fitted = [fitting[values][index] for index in best]
            assert results["fitted_schedules"][denoiser][name] == fitted
            kind = "patch_size" if denoiser == "pspc_square" else "threshold"
            schedule = load_schedule(out / "schedules" / f"{name}-{denoiser}.toml", kind)
            assert [schedule(sigma) for sigma in results["sigmas"]] == fitted
            assert results["schedules_used"][denoiser][name]["source"] == "fitted"


def test_report_is_self_contained_with_embedded_figures(setup):
    page = (setup["out"] / "report.html").read_text()
    figures = sorted((setup["out"] / "figures").glob("*.png"))
    assert len(figures) >= 10
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert 'src="figures/' not in page and "<link" not in page
    for text in ("Headline numbers", "pspc_flex", "No feature model was given", "Timings per stage", "torch",
                 "mixer: the two readings coincide (one-channel images)"):
        assert text in page
    assert "apply only to heatmaps the study computes itself" not in page  # its heatmaps were computed here


def test_one_channel_heatmap_readings_coincide(setup):
    results = setup["results"]
    for name in ("mixer", "dit"):
        readings = results["heatmap_readings"][name]
        assert readings["used"] == "same_channel" and readings["equal"] is True
        fitted = results["fitted_schedules"]["pspc_flex"][name]
        assert readings["fitted"]["pspc_flex"] == {"same_channel": fitted, "all_channels": fitted}
        extent = results["heatmaps"][name]["extent"]
        assert extent["same_channel"] == extent["all_channels"]
    assert not [stage for stage in results["stages"] if stage.endswith("_channel") or stage.endswith("_channels")]


def test_colour_heatmap_readings_both_reach_results_and_report(tmp_path):
    """3x8x8 images: the readings differ; lambda fitted under the other reading is what a study using that reading
    fits, and the report sets extent and fitted lambda of the two readings side by side."""
    images = (np.random.default_rng(1).random((12, 8, 8, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images)
    mixer = tiny_network(tmp_path, "mixer", dict(hidden_size=16, depth=1, patch_size=2), seed=0, channels=3)
    table = {"data": {"source": str(tmp_path / "rgb.npz"), "xflip": True},
             "networks": [{"name": "mixer", "path": str(mixer)}],
             "denoisers": {"optimal": {}, "pspc_flex": {"candidates": [0.2, 0.5, 1.0]}},
             "sigmas": {"steps": STEPS},
             "evaluation": {"forward_pairs": 2, "reverse_trajectories": 2, "batch_size": 8},
             "heatmaps": {"n_samples": 2}, "fitting": {"pairs": 2, "trajectories": 2}}
    results = run_locality_study(from_dict(LocalityStudyConfig, table), tmp_path / "same")
    readings = results["heatmap_readings"]["mixer"]
    assert readings["used"] == "same_channel" and readings["equal"] is False
    extent = results["heatmaps"]["mixer"]["extent"]
    assert extent["same_channel"] != extent["all_channels"] and len(extent["all_channels"]) == STEPS
    assert readings["fitted"]["pspc_flex"]["same_channel"] == results["fitted_schedules"]["pspc_flex"]["mixer"]
    assert "outputs-fit_reverse-mixer-pspc_flex=0.2-all_channels" in results["stages"]
    other_table = dict(table, heatmaps={"n_samples": 2, "reading": "all_channels"})
    other = run_locality_study(from_dict(LocalityStudyConfig, other_table), tmp_path / "all", write_report=False)
    assert other["fitted_schedules"]["pspc_flex"]["mixer"] == readings["fitted"]["pspc_flex"]["all_channels"]
    assert other["heatmap_readings"]["mixer"]["fitted"] == readings["fitted"]
    for reading in ("same_channel", "all_channels"):
        assert other["heatmap_readings"]["mixer"]["fit_mse"]["pspc_flex"][reading] == pytest.approx(
            readings["fit_mse"]["pspc_flex"][reading], rel=1e-6)
    page = (tmp_path / "same" / "report.html").read_text()
    for text in ("mixer: the readings differ; the study uses same_channel", "extent (all_channels)",
                 "pspc_flex fitted threshold (same_channel)", "pspc_flex fitted threshold (all_channels)"):
        assert text in page


def test_rerun_recomputes_only_a_deleted_stage(setup, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(setup["out"], out)
    config = from_dict(LocalityStudyConfig, setup["table"])
    assert run_locality_study(config, out, write_report=False)["stages_computed"] == []
    (deleted,) = (out / "stages").glob("outputs-forward-gaussian-*.safetensors")
    deleted.unlink()
    untouched = {path: path.stat().st_mtime_ns for path in (out / "stages").glob("*.safetensors") if path != deleted}
    rerun = run_locality_study(config, out, write_report=False)
    assert rerun["stages_computed"] == ["outputs-forward-gaussian"]
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    assert rerun["forward"]["mse"] == setup["results"]["forward"]["mse"]


def test_crash_mid_stage_leaves_no_corrupt_file_and_resumes(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(setup["out"], out)
    config = from_dict(LocalityStudyConfig, setup["table"])
    for path in (out / "stages").glob("heatmaps-dit-*.safetensors"):
        path.unlink()
    left = out / "stages" / ".flex_sweep-x.safetensors.abc.tmp"
    left.write_bytes(b"left by kill -9")
    os.utime(left, (left.stat().st_mtime - 3600, left.stat().st_mtime - 3600))  # an hour ago

    def crash_while_writing(tensors, target, metadata=None):
        Path(target).write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cache_module, "save_file", crash_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_locality_study(config, out)
    monkeypatch.undo()
    assert not list((out / "stages").glob("heatmaps-dit-*")) and not list((out / "stages").glob(".*"))

    def crash_while_computing(*args, **kwargs):
        raise RuntimeError("crashed in the middle of the stage")

    monkeypatch.setattr(locality_stages, "compute_heatmaps", crash_while_computing)
    with pytest.raises(RuntimeError):
        run_locality_study(config, out)
    monkeypatch.undo()
    assert not list((out / "stages").glob("heatmaps-dit-*"))
    resumed = run_locality_study(config, out, write_report=False)
    assert resumed["stages_computed"] == ["heatmaps-dit"]
    assert resumed["heatmaps"]["dit"]["extent"] == setup["results"]["heatmaps"]["dit"]["extent"]


def test_heatmap_convergence_evidence_reaches_results_and_report(setup, tmp_path):
    """A heatmap file with per-sigma z counts and convergence arrays: results.json carries them per study sigma and
    the report shows the criterion table and the convergence figure."""
    from denoiserlab.studies.locality.heatmaps import read_heatmaps_file, save_heatmaps_file

    source = read_heatmaps_file(setup["out"] / "heatmaps" / "mixer.npz")
    levels = len(source["sigmas"])
    convergence = {"converged": torch.tensor([True] * (levels - 1) + [False]),
                   "flex_change": torch.linspace(0.001, 0.03, levels, dtype=torch.float64),
                   "flex_fitted_threshold": torch.full((levels,), 0.3, dtype=torch.float64),
                   "relative_se": torch.full((levels,), 0.05, dtype=torch.float64),
                   "half_iou": torch.full((levels, 3), 0.9, dtype=torch.float64),
                   "iou_thresholds": torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64),
                   "running_counts": torch.tensor([1, 2, 4]),
                   "running_distances": torch.full((levels, 3), 0.1, dtype=torch.float64),
                   "reference_sigma": torch.tensor(1.5, dtype=torch.float64), "reference_n_samples": torch.tensor(256),
                   "reference_distance": torch.tensor(0.04, dtype=torch.float64),
                   "reference_iou": torch.tensor([0.95, 0.93, 0.97], dtype=torch.float64)}
    path = tmp_path / "converged.npz"
    save_heatmaps_file(path, {"sigmas": source["sigmas"], "same_channel": source["same_channel"].float(),
                              "n_samples": torch.arange(16, 16 + levels), "convergence": convergence}, "test")
    table = dict(setup["table"], networks=[{"name": "mixer", "path": setup["table"]["networks"][0]["path"],
                                            "heatmaps": str(path)}], denoisers={"optimal": {}})
    results = run_locality_study(from_dict(LocalityStudyConfig, table), tmp_path / "out")
    block = results["heatmaps"]["mixer"]
    assert block["n_samples"] == list(range(16, 16 + levels))
    assert block["convergence"]["flex_change"] == pytest.approx(convergence["flex_change"].tolist())
    assert block["convergence"]["converged"] == [True] * (levels - 1) + [False]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "met at %d of %d sigmas" % (levels - 1, levels) in page and "256-z reference" in page
    assert "apply only to heatmaps the study computes itself; mixer read theirs from a file" in page
    assert (tmp_path / "out" / "figures" / "heatmap-convergence-mixer.png").is_file()


def test_heatmap_file_and_fixed_schedule(setup, tmp_path):
    heatmap_file = setup["out"] / "heatmaps" / "mixer.npz"
    with np.load(heatmap_file) as archive:
        assert archive["same_channel"].dtype == np.float16
        assert archive["same_channel"].shape == (STEPS, 8, 8, 8, 8)
        assert "n_samples=2" in str(archive["command"])
    table = dict(setup["table"], networks=[{"name": "mixer", "path": setup["table"]["networks"][0]["path"],
                                            "heatmaps": str(heatmap_file)}],
                 denoisers={"optimal": {}, "pspc_flex": {"schedule": "cifar10"}})
    results = run_locality_study(from_dict(LocalityStudyConfig, table), tmp_path / "out", write_report=False)
    assert (tmp_path / "out" / "results.json").is_file() and not (tmp_path / "out" / "report.html").exists()
    assert results["heatmaps"]["mixer"]["source"] == str(heatmap_file)
    assert "n_samples=2" in results["heatmaps"]["mixer"]["command"]
    assert not any(name.startswith("heatmaps-") for name in results["stages_computed"])
    assert results["heatmaps"]["mixer"]["matches_network"] is True  # the study's own file names its checkpoint
    used = results["schedules_used"]["pspc_flex"]["mixer"]
    assert used["source"] == "cifar10" and used["values"] == list(CIFAR10_THRESHOLDS)
    assert set(results["forward"]["mse"]["mixer"]) == {"optimal", "pspc_flex"}
    bad = dict(table, sigmas={"steps": 4})
    with pytest.raises(DenoiserLabError, match="has no heatmap at sigma"):
        run_locality_study(from_dict(LocalityStudyConfig, bad), tmp_path / "bad")
    other = dict(table, networks=[{"name": "dit", "path": setup["table"]["networks"][1]["path"],
                                   "heatmaps": str(heatmap_file)}])  # the mixer's maps named for the DiT
    with pytest.raises(DenoiserLabError, match="computed from another checkpoint"):
        run_locality_study(from_dict(LocalityStudyConfig, other), tmp_path / "other")
    assert not (tmp_path / "other" / "stages").exists()  # refused before any stage


def test_config_errors_name_the_file_and_key(setup, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text(setup["config_path"].read_text().replace("forward_pairs", "forward_pair"))
    with pytest.raises(DenoiserLabError, match=f"{path}: unknown key 'evaluation.forward_pair'; allowed keys"):
        run_cli([str(path), "--out", str(tmp_path / "out")])
    table = dict(setup["table"], heatmaps={"reading": "both"})
    with pytest.raises(DenoiserLabError, match="key 'heatmaps.reading' must be one of \\['same_channel'"):
        from_dict(LocalityStudyConfig, table, source=str(path))
    with pytest.raises(DenoiserLabError, match="evaluation.forward_pairs must be an integer >= 1, got 0"):
        from_dict(LocalityStudyConfig, dict(setup["table"], evaluation={"forward_pairs": 0}), source=str(path))
    with pytest.raises(DenoiserLabError, match="missing required key 'networks'"):
        from_dict(LocalityStudyConfig, {}, source=str(path))
    unknown_denoiser = dict(setup["table"], denoisers={"optimal": {}, "wiener": {}})
    with pytest.raises(DenoiserLabError, match=f"{path}: denoisers must be registry names"):
        from_dict(LocalityStudyConfig, unknown_denoiser, source=str(path))


def test_training_set_defaults_to_the_one_the_networks_record():
    from types import SimpleNamespace

    from denoiserlab.studies.common.config import DataConfig, NetworkConfig
    from denoiserlab.studies.common.inputs import LoadedNetwork, study_data_options

    def network(name: str, recorded: dict | None) -> LoadedNetwork:
        return LoadedNetwork(NetworkConfig(name, "unused"), SimpleNamespace(training_data=recorded), {})

    recorded = {"source": "fashion-mnist", "subset": 500}
    same = {"a": network("a", recorded), "b": network("b", dict(recorded))}
    assert study_data_options(None, same) == recorded
    table = DataConfig(source="x.npz", xflip=True)
    assert study_data_options(table, same) == {**table.load_options(), "xflip": True}
    with pytest.raises(DenoiserLabError, match="networks record different training sets"):
        study_data_options(None, {"a": network("a", recorded), "b": network("b", {"source": "fashion-mnist"})})
    with pytest.raises(DenoiserLabError, match="network 'b' does not record its training data"):
        study_data_options(None, {"a": network("a", recorded), "b": network("b", None)})


@pytest.mark.parametrize("name", ["locality-fashion-mnist.toml", "locality-all-methods.toml", "paper-cifar10.toml",
                                  "fashion-mnist-full.toml"])
def test_shipped_study_configs_load(name):
    path = Path(__file__).resolve().parents[1] / "configs" / name  # locality-fashion-mnist.toml: the demo config
    config = load_toml(LocalityStudyConfig, path)
    assert config.networks and "optimal" in config.denoisers


def test_shipped_names_resolve_inside_the_package_assets():
    from denoiserlab.studies.common.inputs import heatmaps_path, network_path

    assert network_path("runs/a") == Path("runs/a")
    with pytest.raises(DenoiserLabError, match="nothing shipped as shipped:no-such-net .*assets/checkpoints"):
        network_path("shipped:no-such-net")
    with pytest.raises(DenoiserLabError, match="assets/heatmaps/no-such.npz"):
        heatmaps_path("shipped:no-such.npz")


def test_feature_model_adds_feature_cosine(setup, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(setup["out"], out)
    torch.manual_seed(0)
    encoder = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Tanh(), torch.nn.Flatten()))
    model_path = tmp_path / "encoder.pt"
    encoder.save(str(model_path))
    results = run_locality_study(from_dict(LocalityStudyConfig, setup["table"]), out, feature_model=str(model_path))
    assert results["stages_computed"] == [] and results["feature_model"] == str(model_path)
    optimal_samples = stage_value(out, "samples-optimal")
    network_samples = stage_value(out, "reverse_set-mixer")["samples"]
    with torch.no_grad():
        a, b = encoder(optimal_samples).double(), encoder(network_samples).double()
    cosines = [(u @ v / (u.norm() * v.norm())).item() for u, v in zip(a, b)]
    assert results["similarity_per_sample"]["feature_cosine"]["mixer"]["optimal"] == pytest.approx(cosines, rel=1e-5)
    assert results["similarity"]["feature_cosine"]["mixer"]["optimal"] == pytest.approx(np.mean(cosines), rel=1e-5)
    assert "No feature model was given" not in (out / "report.html").read_text()


def test_convergence_note_names_the_cap_only_where_the_criterion_was_not_met():
    from denoiserlab.report.locality import convergence_note

    all_met = convergence_note("mixer", {"converged": [True] * 3, "tolerance": 0.02})
    one_unmet = convergence_note("mixer", {"converged": [True, False, True], "tolerance": 0.02})
    assert "met at 3 of 3 sigmas)" in all_met and "--n-samples" not in all_met
    assert "met at 2 of 3 sigmas; where it was not met" in one_unmet


def test_convergence_table_shows_each_reading_for_colour_heatmaps():
    from denoiserlab.report.locality import convergence_note, convergence_rows, reference_note

    evidence = {"converged": [True, False], "tolerance": 0.02, "iou_thresholds": [0.3, 0.9],
                "flex_change": [0.01, 0.015], "flex_fitted_threshold": [0.3, 0.5], "relative_se": [0.1, 0.2],
                "half_iou": [[0.9, 0.8], [0.7, 0.6]], "reference_sigma": 1.9, "reference_n_samples": 64,
                "reference_distance": 0.05, "reference_iou": [0.95, 0.9]}
    header, rows = convergence_rows([2.0, 1.0], {"convergence": evidence, "n_samples": [16, 32]})
    assert len(header) == 8 and rows[1] == [1.0, 32, False, 0.015, 0.5, 0.2, 0.7, 0.6]
    colour = {**evidence, "all_channels_flex_change": [0.012, 0.03], "all_channels_flex_fitted_threshold": [0.2, 0.4],
              "all_channels_relative_se": [0.11, 0.21], "all_channels_half_iou": [[0.85, 0.75], [0.65, 0.55]],
              "all_channels_reference_distance": 0.07, "all_channels_reference_iou": [0.9, 0.85]}
    header, rows = convergence_rows([2.0, 1.0], {"convergence": colour, "n_samples": [16, 32]})
    assert header[3] == "PSPC-Flex MSE change on doubling (same_channel)"
    assert header[8] == "PSPC-Flex MSE change on doubling (all_channels)"
    assert rows[1] == [1.0, 32, False, 0.015, 0.5, 0.2, 0.7, 0.6, 0.03, 0.4, 0.21, 0.65, 0.55]
    assert "under both readings" in convergence_note("rgb", colour)
    assert "under both readings" not in convergence_note("gray", evidence)
    note = reference_note("rgb", colour, "all_channels_")
    assert "rgb (all_channels reading)" in note and "7.0 %" in note and "0.90, 0.85" in note
