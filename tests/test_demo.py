"""`make demo`'s configs ship inside the package and load; its index page shows both studies' headline numbers."""

from denoiserlab.config import load_toml
from denoiserlab.report.demo import demo_index_html
from denoiserlab.studies.demo import GAUSSIAN_CONFIG, LOCALITY_CONFIG, demo_config_path
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
    page = demo_index_html({"locality": locality, "gaussian": gaussian,
                            "timings_s": {"locality": 300.0, "gaussian": 100.0}})
    for text in ('href="locality/report.html"', 'href="gaussian/report.html"', "pspc_flex &lt; gaussian &lt; optimal",
                 "0.962", "N=64", "9.5", "computed in 300 s", "generalizes", "memorizes", "score 0.36"):
        assert text in page
