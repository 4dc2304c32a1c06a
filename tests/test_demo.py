"""`make demo`'s configs ship inside the package and load; its index page shows both studies' headline numbers;
`demo --dataset emoji` finds every file it names, and a demo whose shipped files are missing stops before any work."""

import pytest

from denoiserlab.cli import main
from denoiserlab.config import load_toml
from denoiserlab.report.demo import demo_index_html
from denoiserlab.studies import demo as demo_module
from denoiserlab.studies.demo import (GAUSSIAN_CONFIG, LOCALITY_CONFIG, demo_config_path, demo_configs,
                                      missing_shipped, shipped_names)
from denoiserlab.studies.gaussian_structure.config import GaussianStudyConfig
from denoiserlab.studies.locality.config import LocalityStudyConfig
from denoiserlab.studies.common.inputs import heatmaps_path, network_path


def test_demo_configs_load_and_name_shipped_files():
    locality = load_toml(LocalityStudyConfig, demo_config_path(LOCALITY_CONFIG))
    assert {network.name for network in locality.networks} == {"unet", "dit", "mixer"}
    for network in locality.networks:
        assert network_path(network.path).is_dir() and heatmaps_path(network.heatmaps).is_file()
    gaussian = load_toml(GaussianStudyConfig, demo_config_path(GAUSSIAN_CONFIG))
    assert gaussian.networks[0].path == "shipped:unet-small-fashion-mnist"
    for entry in gaussian.sweeps.entries:
        assert network_path(entry.path).is_dir()


def test_index_page_shows_headline_numbers_and_links():
    locality = {"checks": {"unet": {"peak_sigma_forward": 2.5, "rise_and_fall_forward": True,
                                    "ranking_at_peak_forward": ["pspc_flex", "gaussian", "optimal"]}},
                "nearest_neighbour": {"unet": {"network": 9.5, "optimal": 0.0}}}
    gaussian = {"checks": {"unet-small": {"linearity_cosine_min": 0.962, "linearity_cosine_min_sigma": 1.5,
                                          "generalization_score": 0.47, "heldout_score": 0.36,
                                          "calibrated_score": 1.31, "memorized_fraction": 0.0,
                                          "verdict": "generalizes", "generalizes": True}},
                "sweeps": {"entries": [{"label": "N=64", "kind": "n_train", "value": 64,
                                        "generalization_score": 0.05, "calibrated_score": 0.1,
                                        "memorized_fraction": 0.7, "verdict": "memorizes"}]}}
    page = demo_index_html({"locality": locality, "gaussian": gaussian, "dataset": "Fashion-MNIST",
                            "timings_s": {"locality": 300.0, "gaussian": 100.0}})
    for text in ('href="locality/report.html"', 'href="gaussian/report.html"', "pspc_flex &lt; gaussian &lt; optimal",
                 "0.962", "N=64", "9.5", "computed in 300 s", "generalizes", "memorizes", "score 0.36",
                 "denoiserlab demo: Fashion-MNIST, shipped networks"):
        assert text in page


def test_index_page_shows_the_ranking_the_pearson_r_and_the_time_per_stage():
    by_range = {span: {"sigmas": sigmas, "order": order, "geometric_mean_mse": {}} for span, sigmas, order in (
        ("high", [10.0, None], ["gaussian", "els"]), ("middle", [0.5, 10.0], ["els", "gaussian"]),
        ("low", [0.0, 0.5], ["optimal", "els"]))}
    ranking = {"per_sigma": [], "closest": [], "at_peak": ["els", "gaussian", "optimal"], "peak_sigma": 1.92,
               "by_range": by_range}
    locality = {"networks": ["unet"], "dataset": {"name": "fashion-mnist/train"},
                "checks": {"unet": {"peak_sigma_forward": 1.92, "rise_and_fall_forward": True,
                                    "ranking_at_peak_forward": ["els", "gaussian", "optimal"]}},
                "ranking": {"forward": {"unet": ranking}, "reverse": {"unet": ranking}},
                "papers": {"kamb_ganguli_2025": {"title": "Kamb & Ganguli 2025, x", "claim": "c",
                                                 "sample_pearson_r_fashion_mnist_unet": {"els": 0.93}}},
                "sample_pearson_r": {"unet": {"els": {"median": 0.871, "mean": 0.8, "r2_median": 0.76, "n": 8}}},
                "nearest_neighbour": {"unet": {"network": 9.5}}}
    gaussian = {"checks": {}, "sweeps": {"entries": []}}
    stage_timings = {"locality: fitting sweeps: els": {"seconds": 61.5, "cpu_seconds": 60.2, "count": 9}}
    page = demo_index_html({"locality": locality, "gaussian": gaussian, "stage_timings": stage_timings,
                            "dataset": "emoji",
                            "timings_s": {"locality": 300.0, "gaussian": 100.0, "total": 310.0},
                            "cpu_seconds": {"locality": 290.0, "gaussian": 95.0}})
    for text in ("Closest to unet on our data (fashion-mnist/train) by MSE: forward process: gaussian at high sigma,"
                 " els at middle sigma, optimal at low sigma", "els &lt; gaussian &lt; optimal", "0.871", "0.93",
                 "fitting sweeps: els", "61.5", "Where the time went", "denoiserlab demo: emoji, shipped networks"):
        assert text in page, text


def test_every_shipped_file_of_the_default_demo_is_there():
    names = shipped_names(*demo_configs("fashion-mnist"))
    assert "shipped:unet-small-fashion-mnist" in names["checkpoints"]
    assert "shipped:sweep-fashion-mnist/n16" in names["checkpoints"]
    assert names["heatmaps"] == ["shipped:unet-small.npz", "shipped:dit-small.npz", "shipped:mixer-small.npz"]
    assert names["feature_models"] == ["shipped:fashion-mnist-classifier.pt"]
    assert missing_shipped(*demo_configs("fashion-mnist")) == {}


def test_emoji_demo_configs_name_the_emoji_networks_and_colour_pixels():
    locality, gaussian = demo_configs("emoji")
    assert [network.path for network in locality.networks] == ["shipped:unet-small-emoji", "shipped:dit-small-emoji"]
    assert gaussian.networks[0].path == "shipped:unet-small-emoji" and not gaussian.sweeps.entries
    assert [31] == [pixel[1] for pixel in locality.heatmaps.pixels if pixel[0] == 0]  # 32x32 corner
    assert gaussian.distillation.n_samples >= 2 * (3 * 32 * 32 + 1)  # the split-half estimate needs two fits


def test_every_shipped_file_of_the_emoji_demo_is_there(tmp_path, capsys):
    names = shipped_names(*demo_configs("emoji"))
    assert names["checkpoints"] == ["shipped:unet-small-emoji", "shipped:dit-small-emoji"]
    assert names["heatmaps"] == ["shipped:unet-small-emoji.npz", "shipped:dit-small-emoji.npz"]
    assert missing_shipped(*demo_configs("emoji")) == {}
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--dataset", "emoji", "--out", str(out)]) == 2
    assert "--quick samples the shipped Fashion-MNIST U-Net" in capsys.readouterr().err and not out.exists()


def test_demo_missing_a_shipped_file_stops_before_any_work_naming_it(tmp_path, capsys, monkeypatch):
    heatmaps = tmp_path / "heatmaps"
    heatmaps.mkdir()
    (heatmaps / "dit-small-emoji.npz").touch()  # an install that lost the U-Net's heatmaps
    real_folder = demo_module.assets_folder
    monkeypatch.setattr(demo_module, "assets_folder",
                        lambda folder: heatmaps if folder == "heatmaps" else real_folder(folder))
    monkeypatch.setattr(demo_module, "run_parts", lambda *args: pytest.fail("the demo started a study"))
    out = tmp_path / "out"
    assert main(["demo", "--dataset", "emoji", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("denoiserlab: error: demo --dataset emoji needs shipped files this package lacks "
                           "(heatmaps unet-small-emoji.npz under src/denoiserlab/assets/)")
    assert "checkpoints" not in line and line.endswith("reinstall denoiserlab: these files ship with it")
    assert captured.out == "" and not out.exists()


def test_demo_runs_on_fashion_mnist_by_default(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("denoiserlab.cli.demo.run_demo", lambda out, **options: calls.append(options))
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    assert calls == [{"jobs": None, "device": "cpu", "dataset": "fashion-mnist", "locality_config": None,
                      "gaussian_config": None}]


def test_demo_with_a_missing_config_or_quick_stops_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_module, "run_parts", lambda *args: pytest.fail("the demo started a study"))
    out = tmp_path / "out"
    assert main(["demo", "--locality-config", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"denoiserlab: error: study config {tmp_path / 'nope.toml'} is not a file\n"
    assert main(["demo", "--quick", "--gaussian-config", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert "--dataset and the configs apply to the studies" in capsys.readouterr().err
    assert not out.exists()
