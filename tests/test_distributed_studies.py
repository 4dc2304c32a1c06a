"""Issue 13 part 2: both studies under torchrun give the one-process results. Two ranks (processes started here with
the environment torchrun gives its workers) run a tiny study with every registered denoiser: the networks run
data-parallel over each batch, the analytical denoisers shard the training set, rank 0 alone keeps the stage files
and writes the outputs."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from denoiserlab.cli import main
from denoiserlab.networks.build import build_denoiser
from denoiserlab.networks.checkpoint import save_checkpoint
from denoiserlab.process_group import parallel_over_rows
from denoiserlab.studies.common.ranks import RowParallelNetwork, broadcast_value, row_parallel, unwrapped
from test_distributed import run_as_torchrun

# what differs between two runs of the same study: wall and CPU times, the command line, the stage bookkeeping
RUN_KEYS = {"timings_s", "stages", "stages_computed", "command", "seconds", "cpu_seconds", "report"}


def json_leaves(value, path=""):
    """(path, leaf) of every leaf of a JSON value, skipping RUN_KEYS."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in RUN_KEYS:
                yield from json_leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def method_order(path: str) -> bool:
    """Whether a results.json leaf names a method by its place in an order of MSEs (rankings, closest methods):
    two methods whose MSEs tie to ~1e-7 may trade places between two runs that agree to 1e-4."""
    return "ranking" in path or "closest" in path


def ordered_members(leaves: dict) -> dict:
    """{list path: sorted method names} of every full ordering among the method_order leaves (the closest-per-sigma
    lists and single closest names are left out: a tie changes which name they hold, not only where)."""
    members = defaultdict(list)
    for path, value in leaves.items():
        if method_order(path) and "closest" not in path and isinstance(value, str):
            members[re.sub(r"\[\d+\]$", "", path)].append(value)
    return {path: sorted(names) for path, names in members.items()}


def assert_same_results(two: Path, one: Path) -> None:
    """The results.json files of two output folders: equal keys, strings (paths into the folder aside) and flags;
    numbers to 1e-4 relative (a float32 network on a batch split over two ranks differs from one batch by ~1e-7 a
    call, which the 3-step trajectories carry into every number). Orders of methods by MSE hold the same methods,
    each a method of the one-process run; their order is the numbers' (checked to 1e-4), so near-ties may swap."""
    text = (two / "results.json").read_text().replace(str(two), str(one))
    leaves_two, leaves_one = (dict(json_leaves(json.loads(content)))
                              for content in (text, (one / "results.json").read_text()))
    assert leaves_two.keys() == leaves_one.keys()
    names = {value for path, value in leaves_one.items() if method_order(path) and isinstance(value, str)}
    for path, expected in leaves_one.items():
        got = leaves_two[path]
        if isinstance(expected, float) and not isinstance(expected, bool):
            assert isinstance(got, (int, float)) and (math.isnan(got) == math.isnan(expected)), path
            if not math.isnan(expected):
                assert got == pytest.approx(expected, rel=1e-4, abs=1e-6), path
        elif method_order(path) and isinstance(expected, str):
            assert got in names, path
        else:
            assert got == expected, path
    assert ordered_members(leaves_two) == ordered_members(leaves_one)


def tiny_network(folder: Path, architecture: str, overrides: dict, seed: int, training_data: dict) -> Path:
    torch.manual_seed(seed)
    network = build_denoiser(architecture, 1, 8, overrides=overrides, training_data=training_data).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return save_checkpoint(folder / architecture, network, preset=architecture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """13 training and 6 test images of 1x8x8 and two tiny networks recording them."""
    root = tmp_path_factory.mktemp("distributed_studies")
    pixels = (np.random.default_rng(0).random((19, 8, 8)) * 255).astype(np.uint8)
    np.savez(root / "tiny.npz", train_images=pixels[:13], test_images=pixels[13:])
    data = {"source": str(root / "tiny.npz")}
    tiny_network(root, "mixer", dict(hidden_size=16, depth=1, patch_size=2), 0, data)
    tiny_network(root, "dit", dict(hidden_size=16, depth=1, num_heads=2, patch_size=2, dropout=0.0), 1, data)
    return root


LOCALITY_TABLE = {"all_denoisers": True,
                  "denoisers": {"knn": {"k": 4, "n_random": 2}, "gaussian_mixture": {"components": 2}},
                  "sigmas": {"steps": 3},
                  "evaluation": {"forward_pairs": 3, "reverse_trajectories": 3, "batch_size": 8},
                  "heatmaps": {"n_samples": 2},
                  "fitting": {"pairs": 2, "trajectories": 2}}
GAUSSIAN_TABLE = {"all_denoisers": True,
                  "denoisers": {"knn": {"k": 4, "n_random": 2}, "gaussian_mixture": {"components": 2}},
                  "sigmas": {"steps": 3},
                  "linearity": {"n_pairs": 4, "alphas": [0.3]},
                  "distillation": {"n_samples": 140, "top_k": 4, "batch_size": 40},  # >= 2 (D + 1): split-half too
                  "score_error": {"n_samples": 8, "batch_size": 8},
                  "sampling": {"n_samples": 3},
                  "generalization": {"k": 4, "steps": 3, "sampler": "euler", "batch_size": 3}}


def networks(root: Path, *names: str) -> list[dict]:
    return [{"name": name, "path": str(root / name)} for name in names]


def study_outputs(root: Path, command: str, table: dict) -> tuple[list, Path, Path]:
    """Run `command` on `table` under two ranks and in one process: (rank results, 2-rank out, 1-process out)."""
    config = root / f"{command}.toml"
    config.write_text(tomli_w.dumps(table))
    two, one = root / f"{command}-two", root / f"{command}-one"
    ranks = run_as_torchrun([[command, str(config), "--out", str(two)]] * 2)
    assert [rank.returncode for rank in ranks] == [0, 0], [rank.stderr[-2000:] for rank in ranks]
    assert main([command, str(config), "--out", str(one)]) == 0
    return ranks, two, one


def test_locality_study_under_torchrun_equals_one_process(tiny):
    table = dict(LOCALITY_TABLE, networks=networks(tiny, "mixer", "dit"))
    ranks, two, one = study_outputs(tiny, "study", table)
    assert "report:" in ranks[0].stdout and ranks[1].stdout == ""  # rank 0 reports, rank 1 only computes
    assert_same_results(two, one)
    assert sorted(path.name for path in (two / "stages").iterdir()) == sorted(
        path.name for path in (one / "stages").iterdir())  # the same stages, each written once, by rank 0
    assert (two / "report.html").is_file() and (two / "config.toml").is_file()
    rerun = run_as_torchrun([["study", str(tiny / "study.toml"), "--out", str(two)]] * 2)  # resumes: loads all
    assert [rank.returncode for rank in rerun] == [0, 0]
    assert "stages computed this run: 0" in rerun[0].stdout


def test_gaussian_study_under_torchrun_equals_one_process(tiny):
    table = dict(GAUSSIAN_TABLE, networks=networks(tiny, "mixer"))
    ranks, two, one = study_outputs(tiny, "gaussian-study", table)
    assert "results.json and report.html" in ranks[0].stdout and ranks[1].stdout == ""
    assert_same_results(two, one)
    assert (two / "report.html").is_file()


def test_demo_under_torchrun_equals_one_process(tiny):
    """`denoiserlab demo` with a user's two configs: under two ranks both studies run one after the other over
    the ranks, rank 0 alone prints and writes the index page, and each study's results equal one process's."""
    configs = []
    for name, table in (("demo-locality", dict(LOCALITY_TABLE, networks=networks(tiny, "mixer"))),
                        ("demo-gaussian", dict(GAUSSIAN_TABLE, networks=networks(tiny, "dit")))):
        configs.append(tiny / f"{name}.toml")
        configs[-1].write_text(tomli_w.dumps(table))
    argv = ["demo", "--locality-config", str(configs[0]), "--gaussian-config", str(configs[1])]
    two, one = tiny / "demo-two", tiny / "demo-one"
    ranks = run_as_torchrun([[*argv, "--out", str(two)]] * 2)
    assert [rank.returncode for rank in ranks] == [0, 0], [rank.stderr[-2000:] for rank in ranks]
    assert "one after the other over 2 ranks" in ranks[0].stdout and f"report: {two / 'index.html'}" in ranks[0].stdout
    assert ranks[1].stdout == ""
    assert main([*argv, "--jobs", "1", "--out", str(one)]) == 0
    for study in ("locality", "gaussian"):
        assert_same_results(two / study, one / study)
    page = (two / "index.html").read_text()
    assert "denoiserlab demo: demo-locality.toml and demo-gaussian.toml</" in page  # not "shipped networks"
    assert not (one / "index.html").read_text().count("shipped networks")
    jobs = run_as_torchrun([[*argv, "--jobs", "2", "--out", str(tiny / "demo-jobs")]] * 2)
    assert [rank.returncode for rank in jobs] == [2, 2]
    assert "the demo's studies run one after the other over the ranks" in jobs[0].stderr


def test_study_denoisers_shard_in_a_process_group(monkeypatch):
    """In a process group every registered denoiser that takes `distributed` gets distributed=True, unless set."""
    from denoiserlab.denoisers import REGISTRY
    from denoiserlab.studies.common import methods

    assert "distributed" not in methods.sharded_over_ranks("optimal", {})  # one process: as given
    monkeypatch.setattr(methods, "in_process_group", lambda: True)
    sharding = [name for name in REGISTRY if methods.sharded_over_ranks(name, {}).get("distributed")]
    assert {"optimal", "gaussian", "pspc_square", "pspc_flex", "cfdm", "els", "ls", "data_locality", "knn",
            "gaussian_mixture"} <= set(sharding)
    assert methods.sharded_over_ranks("optimal", {"distributed": False}) == {"distributed": False}


def test_without_a_process_group_the_helpers_are_the_identity():
    network = torch.nn.Linear(2, 2)
    assert row_parallel(network) is network and unwrapped(network) is network
    value = {"a": torch.ones(2), "b": [1, "x", None]}
    assert broadcast_value(value) is value
    rows, sigmas = torch.arange(6.0).reshape(3, 2), torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(parallel_over_rows(lambda x, s: x * s[:, None], rows, sigmas), rows * sigmas[:, None])


def test_a_wrapped_network_keeps_its_attributes_and_outputs():
    network = build_denoiser("mixer", 1, 8, overrides=dict(hidden_size=8, depth=1, patch_size=2),
                             training_data={"source": "somewhere"}).eval()
    wrapped = RowParallelNetwork(network)
    assert wrapped.img_resolution == 8 and wrapped.training_data == {"source": "somewhere"}
    assert unwrapped(wrapped) is network
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, sigma), network(x, sigma), rtol=0, atol=0)
        torch.testing.assert_close(wrapped(x, 0.7), network(x, 0.7), rtol=0, atol=0)
