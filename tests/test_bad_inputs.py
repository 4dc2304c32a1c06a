"""Bad and edge inputs through the Python API (issue 15): each case asserts the exact kind of outcome.

Categories (see the closing note of issue 15): untrusted files are recomputed or refused, never executed; silent wrong
answers are now errors or the correct limit; values that overflowed or files that broke a reader are one
DenoiserLabError naming the problem; nothing of the user's is replaced; the compiled kernel fails over to PyTorch.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import threading
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from denoiserlab import DenoiserLabError
from denoiserlab.data import load
from denoiserlab.denoisers import (GaussianDenoiser, OptimalDenoiser, PSPCFlex, PSPCSquare, create, load_masks,
                                   load_schedule)
from denoiserlab.denoisers import pspc_kernel
from denoiserlab.diffusion import edm_sigmas, sample_euler, sample_heun, sampling_grid, standard_noise
from denoiserlab.studies.cache import StageCache

MARKER_NAME = "planted-code-ran"


def tiny_images(n: int = 12, side: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class PlantedCode:
    """Pickles as a call that creates a marker file: loading it with pickle runs code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


# --- untrusted files: recomputed or refused, never executed -------------------------------------------------------


def test_planted_pickle_in_the_stage_cache_is_not_executed(tmp_path):
    marker = tmp_path / MARKER_NAME
    cache = StageCache(tmp_path / "study")
    path = cache.path("forward_set", {"seed": 0})
    torch.save({"key": {"seed": 0}, "value": PlantedCode(marker), "seconds": 0.0}, path)
    assert cache.run("forward_set", {"seed": 0}, lambda: torch.ones(2)).tolist() == [1.0, 1.0]
    assert not marker.exists()
    assert cache.computed == ["forward_set"] and cache.rejected == [path.name]


def test_planted_pickle_in_the_heatmap_parts_folder_is_not_executed(tmp_path):
    marker = tmp_path / MARKER_NAME
    parts = StageCache(tmp_path / "unet.npz.parts")  # what `denoiserlab heatmaps --out unet.npz` resumes from
    key = {"sigma": 80.0}
    planted = {"key": key, "value": {"same_channel": PlantedCode(marker)}, "seconds": 0.0}
    torch.save(planted, parts.path("level-00", key))
    assert StageCache(tmp_path / "unet.npz.parts").run("level-00", key, lambda: {"same_channel": torch.zeros(1)})
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a stage file", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_stage_file_is_recomputed(tmp_path, content):
    cache = StageCache(tmp_path)
    cache.path("samples", {"n": 1}).write_bytes(content)
    assert cache.run("samples", {"n": 1}, lambda: {"x": torch.arange(3)})["x"].tolist() == [0, 1, 2]
    again = StageCache(tmp_path).run("samples", {"n": 1}, lambda: pytest.fail("computed twice"))
    assert again["x"].tolist() == [0, 1, 2]


def test_stage_file_stored_under_another_key_is_recomputed(tmp_path):
    from denoiserlab.studies.cache import write_stage

    cache = StageCache(tmp_path)
    write_stage(cache.path("outputs", {"sigma": 1.0}), {"sigma": 2.0}, torch.full((2,), 7.0), 0.1)  # moved file
    assert cache.run("outputs", {"sigma": 1.0}, lambda: torch.zeros(2)).tolist() == [0.0, 0.0]


def test_gaussian_cache_entry_of_the_wrong_shape_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train = tiny_images()
    reference = GaussianDenoiser(train, cache=False)
    from denoiserlab.denoisers.gaussian import cache_key, cache_path, moment_sums
    from denoiserlab.denoisers.training_set import training_source

    counts, sums, sketches = moment_sums(training_source(train))
    path = cache_path(cache_key(int(counts[0]), tuple(train.shape[1:]), sums[0], sketches[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tiny_images(3, seed=1)
    for planted in ({"mean": torch.zeros(3, dtype=torch.float64), "eigvals": torch.ones(3, dtype=torch.float64),
                     "eigvecs": torch.eye(3, dtype=torch.float64)},  # wrong shapes
                    {"mean": reference.mean_ + 1e-9, "eigvals": 0 * reference.eigvals_,  # another set's mean
                     "eigvecs": reference.eigvecs_}):
        save_file(planted, str(path))
        torch.save(planted, path.with_suffix(".pt"))
        cached = GaussianDenoiser(train, cache=True)
        assert torch.allclose(cached(x, 0.5), reference(x, 0.5), atol=1e-6)


def test_unwritable_cache_folder_still_gives_the_gaussian_denoiser(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created below a file")
    monkeypatch.setenv("DENOISERLAB_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    train = tiny_images()
    x = tiny_images(2, seed=3)
    assert torch.allclose(GaussianDenoiser(train)(x, 0.3), GaussianDenoiser(train, cache=False)(x, 0.3))


# --- silent wrong answers: now an error naming the problem -------------------------------------------------------


@pytest.mark.parametrize("name,options", [("optimal", {}), ("gaussian", {"cache": False}),
                                          ("pspc_square", {"patch_size": 3})])
@pytest.mark.parametrize("xflip", ["no", 1, None])
def test_non_bool_xflip_is_refused(name, options, xflip):
    with pytest.raises(DenoiserLabError, match="xflip must be True or False"):
        create(name, tiny_images(), xflip=xflip, **options)


@pytest.mark.parametrize("rank", [True, -3, 2.5, "5"])
def test_bad_rank_is_refused(rank):
    with pytest.raises(DenoiserLabError, match="rank"):
        GaussianDenoiser(tiny_images(), rank=rank, cache=False)


@pytest.mark.parametrize("sigma", [True, np.bool_(True), torch.tensor([True, False])])
def test_boolean_sigma_is_refused(sigma):
    train = tiny_images()
    with pytest.raises(DenoiserLabError, match="sigma"):
        OptimalDenoiser(train)(train[:2], sigma)


@pytest.mark.parametrize("chunk_size", [0, -1, True])
def test_chunk_size_below_one_is_refused(chunk_size):
    with pytest.raises(DenoiserLabError, match="chunk_size"):
        OptimalDenoiser(tiny_images(), chunk_size=chunk_size)


def test_training_set_in_0_255_is_refused():
    pixels = (tiny_images() + 1) * 127.5
    with pytest.raises(DenoiserLabError, match=r"must be in \[-1, 1\].*127.5"):
        OptimalDenoiser(pixels)


@pytest.mark.parametrize("source", ["", " ", "\t"])
def test_empty_source_is_refused(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DenoiserLabError, match="source is empty"):
        load(source)


def test_non_bool_xflip_of_load_is_refused():
    with pytest.raises(DenoiserLabError, match="xflip must be True or False"):
        load("fashion-mnist", subset=4, xflip="no")


@pytest.mark.parametrize("arguments,name", [
    (dict(sigma_max=math.inf), "sigma_max"), (dict(sigma_min=math.nan), "sigma_min"), (dict(rho=math.nan), "rho"),
    (dict(rho=0.0), "rho"), (dict(rho=-7.0), "rho"), (dict(n=True), "noise levels"), (dict(n=2.5), "noise levels"),
])
def test_edm_grid_with_bad_arguments_names_the_argument(arguments, name):
    arguments = {"n": 5, **arguments}
    with pytest.raises(DenoiserLabError, match=name):
        edm_sigmas(**arguments)


@pytest.mark.parametrize("grid", [[80.0, math.nan, 0.1], [math.inf, 1.0, 0.0]])
def test_sampling_grid_with_a_nan_or_inf_level_is_refused(grid):
    with pytest.raises(DenoiserLabError, match="sigmas must be finite"):
        sampling_grid(torch.tensor(grid))


@pytest.mark.parametrize("steps", [1, 3])
def test_sampler_names_the_denoiser_that_returned_nan(steps):
    def broken_denoiser(x, sigma):
        return x * math.nan

    with pytest.raises(DenoiserLabError, match="denoiser broken_denoiser returned NaN or inf at sigma = 80"):
        sample_euler(broken_denoiser, torch.zeros(2, 1, 4, 4), steps)


def test_network_with_nan_weights_is_named_with_its_weights():
    from denoiserlab.networks import build_denoiser

    torch.manual_seed(0)
    network = build_denoiser("mixer", 1, 8, dict(hidden_size=8, depth=1, patch_size=4)).eval()
    with torch.no_grad():
        next(network.parameters()).fill_(math.nan)
    with torch.no_grad(), pytest.raises(DenoiserLabError, match=r"network Mixer.*weights are NaN or inf"):
        sample_heun(network, torch.zeros(2, 1, 8, 8), 1)


def test_far_away_queries_are_an_error_of_the_optimal_denoiser_not_nan():
    train = tiny_images()
    with pytest.raises(DenoiserLabError, match="optimal denoiser returned NaN or inf"):
        OptimalDenoiser(train)(torch.full((1, 1, 5, 5), 1e160, dtype=torch.float64), 1.0)


# --- tiny and huge valid sigma: the correct limit -----------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1e-160, 1e-300, 5e-324])
def test_optimal_denoiser_at_tiny_sigma_returns_the_nearest_training_image(sigma):
    train = tiny_images()
    x = train[[2, 7]] + 0.01 * tiny_images(2, seed=5)
    nearest = ((x[:, None] - train[None]) ** 2).flatten(2).sum(2).argmin(1)
    assert torch.equal(OptimalDenoiser(train)(x, sigma), train[nearest])
    weights = OptimalDenoiser(train).posterior_weights(x, sigma)
    assert torch.equal(weights.argmax(1), nearest) and torch.allclose(weights.max(1).values, torch.ones(2).double())


def test_gaussian_denoiser_at_tiny_sigma_projects_onto_the_data():
    train = tiny_images(6)  # 6 images in 25 dimensions: a rank-5 covariance, 20 zero eigenvalues
    den = GaussianDenoiser(train, cache=False)
    assert (den.eigvals_[:5] > 0).all() and (den.eigvals_[5:] == 0).all()  # rounding noise is not a direction
    x = tiny_images(2, seed=4).double()
    projection = den.mean_ + ((x.flatten(1) - den.mean_) @ den.eigvecs_[:, :5]) @ den.eigvecs_[:, :5].T
    for sigma in (1e-170, 1e-300):
        assert torch.allclose(den(x, sigma).flatten(1), projection, atol=1e-10)


def nearest_patch_composite(x: torch.Tensor, train: torch.Tensor, size: int) -> torch.Tensor:
    """The sigma -> 0 limit of PSPC-Square, by loops in float64: each crop takes the mean of its nearest training
    crops (exact ties averaged), each pixel the mean over the crops holding it."""
    x, train = x.double(), train.double()
    batch, channels, height, width = x.shape
    total, count = torch.zeros_like(x), torch.zeros(height, width, dtype=torch.float64)
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
            distances = ((x[window][:, None] - train[window][None]) ** 2).flatten(2).sum(2)  # [B, N]
            nearest = (distances == distances.min(1, keepdim=True).values).double()
            total[window] += torch.einsum("bn,nchw->bchw", nearest / nearest.sum(1, keepdim=True), train[window])
            count[top : top + size, left : left + size] += 1
    return total / count


KERNELS = ["eager", pytest.param("compiled", marks=pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"))]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sigma", [1e-6, 1e-20, 1e-300])
def test_pspc_square_at_tiny_sigma_is_the_nearest_patch_composite(kernel, sigma):
    train = tiny_images(20, side=6)
    train[:, :, :3] = -1.0  # a black band shared by every image: its crops are tied across all images
    x = train[:3] + 0.01 * tiny_images(3, side=6, seed=9)
    out = PSPCSquare(train, 3, kernel=kernel)(x, sigma)
    assert torch.allclose(out.double(), nearest_patch_composite(x, train, 3), atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pspc_flex_at_tiny_sigma_is_finite_and_the_nearest_patch_composite(kernel):
    train = tiny_images(20, side=6)
    x = train[:2] + 1e-3 * tiny_images(2, side=6, seed=2)
    masks = torch.zeros(16, 6, 6, dtype=torch.bool)
    for k, (top, left) in enumerate((t, l) for t in range(4) for l in range(4)):
        masks[k, top : top + 3, left : left + 3] = True
    out = PSPCFlex(train, masks, kernel=kernel)(x, 1e-20)
    assert torch.allclose(out.double(), nearest_patch_composite(x, train, 3), atol=1e-5)


@pytest.mark.parametrize("name,options", [("optimal", {}), ("gaussian", {"cache": False}),
                                          ("pspc_square", {"patch_size": 3, "kernel": "eager"})])
def test_huge_sigma_gives_the_training_mean(name, options):
    train = tiny_images()
    out = create(name, train, **options)(tiny_images(2, seed=8), 1e200)
    assert torch.allclose(out, train.mean(0, keepdim=True).expand(2, -1, -1, -1), atol=1e-6)


# --- values that overflowed and files that broke a reader: one clear error ----------------------------------------


@pytest.mark.parametrize("seed", [2**70, -1, True, 1.5])
def test_noise_seed_out_of_range_is_refused(seed):
    with pytest.raises(DenoiserLabError, match="seed must be an integer"):
        standard_noise((1, 1, 2, 2), seed)


@pytest.mark.parametrize("seed", [-1, 2**70])
def test_data_seed_out_of_range_is_refused(seed):
    with pytest.raises(DenoiserLabError, match="seed must be an integer"):
        load("fashion-mnist", subset=3, seed=seed)


def write_idx_header(path: pathlib.Path, shape: tuple[int, ...], data: bytes = b"") -> None:
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(size.to_bytes(4, "big") for size in shape)
    path.write_bytes(header + data)


@pytest.mark.parametrize("shape,data", [((2**32 - 1, 2**32 - 1, 2**32 - 1), bytes(16)), ((2**31, 2**31, 4), b""),
                                        ((2**32 - 1, 2**32 - 1, 2**32 - 1), b""), ((0, 28, 28), b"")])
def test_idx_header_with_huge_or_zero_sizes(tmp_path, shape, data):
    write_idx_header(tmp_path / "train-images-idx3-ubyte", shape, data)
    with pytest.raises(DenoiserLabError, match="truncated or corrupt|is empty"):
        load(tmp_path / "train-images-idx3-ubyte")


def write_labelled_folder(folder: pathlib.Path, labels: list) -> pathlib.Path:
    from PIL import Image

    folder.mkdir()
    for i in range(len(labels)):
        Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    table = {"labels": [[f"{i}.png", label] for i, label in enumerate(labels)]}
    (folder / "dataset.json").write_text(json.dumps(table))
    return folder


@pytest.mark.parametrize("label", [2**70, -1, 2**31])
def test_huge_or_negative_label_in_dataset_json_is_refused(tmp_path, label):
    with pytest.raises(DenoiserLabError, match="labels"):
        load(write_labelled_folder(tmp_path / "set", [0, label]))


def test_negative_label_in_an_npz_is_refused(tmp_path):
    np.savez(tmp_path / "set.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([3, -5]))
    with pytest.raises(DenoiserLabError, match=r"labels in \[-5, 3\]"):
        load(tmp_path / "set.npz")


@pytest.mark.parametrize("name,content", [("m.npy", b"garbage"), ("m.pt", b"garbage"), ("m.npz", b"PK\x03\x04xx")])
def test_unreadable_mask_file_names_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DenoiserLabError, match=f"cannot read mask file .*{name}"):
        load_masks(tmp_path / name)


@pytest.mark.parametrize("text,message", [
    (b'kind = "patch_size"\nvalues = [3, 3]\nrho = 0\n', "rho must be a finite number"),
    (b'kind = "patch_size"\nvalues = [3, 3]\nsigma_max = inf\n', "sigma_max must be a finite number"),
    (b"\xff\xfe kind", "cannot parse schedule file"),
])
def test_bad_schedule_file_names_the_file_and_the_problem(tmp_path, text, message):
    (tmp_path / "schedule.toml").write_bytes(text)
    with pytest.raises(DenoiserLabError, match=f"schedule.toml.*{message}|{message}.*schedule.toml"):
        load_schedule(tmp_path / "schedule.toml")


def test_fifo_named_like_a_dataset_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "images.npz"
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            load(fifo)
        except DenoiserLabError as error:
            outcome["error"] = str(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # unblock the reader that opened the FIFO, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file or folder" in outcome["error"]


def test_absurd_resolution_is_refused_before_allocating():
    with pytest.raises(DenoiserLabError, match="GiB of memory"):
        load("fashion-mnist", subset=3, resolution=100_000)


def test_absurd_noise_is_refused_before_allocating():
    with pytest.raises(DenoiserLabError, match="GiB of memory"):
        standard_noise((10**9, 1, 28, 28), 0)


def test_covariance_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(DenoiserLabError, match="GiB of memory"):
        GaussianDenoiser(torch.zeros(1, 1, 2000, 2000), cache=False)


# --- nothing of the user's is replaced ----------------------------------------------------------------------------


def test_interrupted_sample_write_keeps_the_previous_pair(tmp_path, monkeypatch):
    from denoiserlab.cli import sample

    out = tmp_path / "out"
    sample.write_samples(out, torch.zeros(2, 1, 4, 4), {"run": 1})
    before = {name: (out / name).read_bytes() for name in ("samples.png", "samples.npz")}

    def interrupted(path, arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "_save_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sample.write_samples(out, torch.ones(2, 1, 4, 4), {"run": 2})
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind


def test_sample_refuses_an_out_folder_holding_the_users_files(tmp_path):
    from denoiserlab.cli import sample

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DenoiserLabError, match="already holds files .*notes.txt"):
        sample.write_samples(tmp_path, torch.zeros(1, 1, 4, 4), {})
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_resolved_config_never_replaces_a_users_config(tmp_path):
    from denoiserlab.outputs import write_resolved_config

    own = tmp_path / "config.toml"
    own.write_text("# my study\n[[networks]]\nname = 'a'\npath = 'x'\n")
    with pytest.raises(DenoiserLabError, match="not a config that denoiserlab wrote"):
        write_resolved_config(own, {"networks": [{"name": "a", "path": "x"}], "device": "cpu"})
    assert own.read_text().startswith("# my study")
    write_resolved_config(own, {"networks": [{"name": "a", "path": "x"}]})  # same settings: left as it is
    assert own.read_text().startswith("# my study")
    written = write_resolved_config(tmp_path / "resolved.toml", {"device": "cpu"})
    write_resolved_config(written, {"device": "cuda"})  # ours: replaced
    assert "cuda" in written.read_text()


def test_locality_study_refuses_to_replace_the_config_it_was_given_before_writing(tmp_path):
    from denoiserlab.config import load_toml
    from denoiserlab.studies.locality import run_locality_study
    from denoiserlab.studies.locality_config import LocalityStudyConfig

    text = "# my study\n[[networks]]\nname = 'unet'\npath = 'no-such-network'\n"  # fails fast once past the config
    (tmp_path / "config.toml").write_text(text)
    config = load_toml(LocalityStudyConfig, tmp_path / "config.toml")
    with pytest.raises(DenoiserLabError, match="config.toml is not a config that denoiserlab wrote"):
        run_locality_study(config, tmp_path)
    assert (tmp_path / "config.toml").read_text() == text and sorted(os.listdir(tmp_path)) == ["config.toml"]


@pytest.mark.parametrize("denoisers,message", [
    ({"optimal": {}, "gaussian": {"rank": -3}}, "denoisers.gaussian: rank must be"),
    ({"optimal": {"xflip": "no"}}, "denoisers.optimal: xflip must be True or False"),
    ({"optimal": {}, "pspc_square": {"patch_sizes": 3}}, "unknown option"),  # patch_size = 3 fixes the value now
    ({"optimal": {}, "els": {"patch_size": 4}}, "denoisers.els: patch size must be an odd int"),
    ({"optimal": {}, "pspc_flex": {"chunk_size": 0}}, "chunk_size must be"),
])
def test_study_denoiser_options_are_checked_when_the_config_loads(tmp_path, denoisers, message):
    import tomli_w

    from denoiserlab.config import load_toml
    from denoiserlab.studies.locality_config import LocalityStudyConfig

    path = tmp_path / "study.toml"
    path.write_text(tomli_w.dumps({"networks": [{"name": "a", "path": "x"}], "denoisers": denoisers}))
    with pytest.raises(DenoiserLabError, match=f"study.toml: {message}|{message}"):
        load_toml(LocalityStudyConfig, path)


# --- training and Gaussian-study configs and run folders ------------------------------------------------------------


def test_gaussian_study_denoiser_options_are_checked_when_the_config_loads():
    from denoiserlab.config import from_dict
    from denoiserlab.studies.gaussian_structure_config import GaussianStudyConfig

    with pytest.raises(DenoiserLabError, match="rank"):
        from_dict(GaussianStudyConfig, {"networks": [{"name": "a", "path": "x"}],
                                        "denoisers": {"gaussian": {"rank": -3}}}, "gaussian.toml")


def test_gaussian_study_refuses_to_replace_the_config_it_was_given(tmp_path):
    from denoiserlab.config import load_toml
    from denoiserlab.studies.gaussian_structure import run_gaussian_study
    from denoiserlab.studies.gaussian_structure_config import GaussianStudyConfig

    text = "# mine\n[[networks]]\nname = 'a'\npath = 'no-such-network'\n"  # fails fast once past the config
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(DenoiserLabError, match="not a config that denoiserlab wrote"):
        run_gaussian_study(load_toml(GaussianStudyConfig, tmp_path / "config.toml"), tmp_path, progress=False)
    assert (tmp_path / "config.toml").read_text() == text


@pytest.mark.parametrize("options", [dict(seed=2**70), dict(seed=-1), dict(data_seed=2**70),
                                     dict(checkpoint_kimg=math.inf), dict(log_kimg=math.inf)])
def test_train_config_refuses_values_that_overflow(options):
    from denoiserlab.networks.training_config import TrainConfig

    with pytest.raises(DenoiserLabError):
        TrainConfig(out="run", **options)


def tiny_train_config(out: pathlib.Path):
    from denoiserlab.networks.training_config import TrainConfig

    return TrainConfig(out=str(out), subset=4, arch="mixer", kimg=0.002, batch_size=2, checkpoint_kimg=0.002,
                       sample_count=1, sample_steps=1, device="cpu",
                       network=dict(hidden_size=8, depth=1, patch_size=7))


def test_training_into_a_checkpoint_folder_keeps_its_files(tmp_path):
    from denoiserlab.assets import shipped_path
    from denoiserlab.networks.training import run_training

    folder = tmp_path / "checkpoint"
    shutil.copytree(shipped_path("sweep-fashion-mnist/n16"), folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(DenoiserLabError, match="not a run folder"):
        run_training(tiny_train_config(folder), progress=False)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_truncated_training_state_is_one_clear_error(tmp_path):
    from denoiserlab.networks.training import run_training

    config = tiny_train_config(tmp_path / "run")
    run_training(config, progress=False)
    state = tmp_path / "run" / "training-state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(DenoiserLabError, match="training-state.pt"):
        run_training(config, progress=False)


# --- the compiled kernel: shipped C source, declared signatures, one failure remembered, PyTorch fallback ----------


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """A process state in which no kernel was built, loaded or failed yet, with its own cache folder."""
    monkeypatch.setattr(pspc_kernel, "_libraries", {})
    monkeypatch.setattr(pspc_kernel, "_failures", {})
    monkeypatch.setattr(pspc_kernel, "_warned", set())
    monkeypatch.setenv("DENOISERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_kernel_source_ships_as_a_c_file_declared_as_package_data():
    import inspect
    import tomllib

    assert (pspc_kernel.KERNEL_FOLDER / "pspc.c").is_file() and (pspc_kernel.KERNEL_FOLDER / "common.h").is_file()
    source = inspect.getsource(pspc_kernel)
    assert "malloc(" not in source and "int pspc_pass1(" not in source and "pspc_pass1" in source
    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "denoisers/kernels/*" in project["tool"]["setuptools"]["package-data"]["denoiserlab"]


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
def test_kernel_functions_have_declared_ctypes_signatures():
    import ctypes

    library = pspc_kernel.load_library()
    for name, (restype, argtypes) in pspc_kernel.PSPC_SIGNATURES.items():
        assert getattr(library, name).argtypes == argtypes and getattr(library, name).restype == restype
    assert library.pspc_pass1.restype is ctypes.c_int and len(library.pspc_pass1.argtypes) == 20


def test_kernel_allocation_failure_is_a_clear_error():
    with pytest.raises(DenoiserLabError, match="could not allocate"):
        pspc_kernel.check_status([0, -1], "pass 1")


def test_failed_build_is_remembered_and_warned_once(fresh_kernel_state, monkeypatch):
    lookups = []
    monkeypatch.setattr(pspc_kernel.shutil, "which", lambda name: lookups.append(name))  # no compiler anywhere
    train, x = tiny_images(), tiny_images(2, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [PSPCSquare(train, 3)(x, 0.5) for _ in range(3)]
    assert len([w for w in caught if "falls back" in str(w.message)]) == 1
    assert lookups == ["gcc", "cc"]  # searched once, not once per instance
    assert torch.allclose(outputs[0], PSPCSquare(train, 3, kernel="eager")(x, 0.5))


def test_unwritable_kernel_cache_folder_falls_back_to_pytorch(fresh_kernel_state, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DENOISERLAB_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    train, x = tiny_images(), tiny_images(2, seed=1)
    with pytest.warns(UserWarning, match="falls back"):
        out = PSPCSquare(train, 3)(x, 0.5)
    assert torch.allclose(out, PSPCSquare(train, 3, kernel="eager")(x, 0.5))


def test_compiler_that_hangs_times_out(fresh_kernel_state, monkeypatch):
    monkeypatch.setattr(pspc_kernel.shutil, "which", lambda name: "/usr/bin/cc")

    def hang(command, **options):
        assert options.get("timeout"), "the compiler runs without a timeout"
        raise subprocess.TimeoutExpired(command, options["timeout"])

    monkeypatch.setattr(pspc_kernel.subprocess, "run", hang)
    with pytest.raises(pspc_kernel.KernelUnavailable, match="took over"):
        pspc_kernel.load_library()
    with pytest.raises(DenoiserLabError, match="took over"):  # kernel="compiled" asked for it: one clear error
        PSPCSquare(tiny_images(), 3, kernel="compiled")(tiny_images(1), 0.5)


def test_kernel_cache_key_does_not_depend_on_the_host_name(fresh_kernel_state, monkeypatch):
    targets = []

    def record(target, source, stem):
        targets.append(target.name)
        raise pspc_kernel.KernelUnavailable("stop after naming the file")

    monkeypatch.setattr(pspc_kernel, "_build", record)
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(pspc_kernel.platform, "node", lambda host=host: host)
        monkeypatch.setattr(pspc_kernel, "_failures", {})
        with pytest.raises(pspc_kernel.KernelUnavailable):
            pspc_kernel.load_library()
    assert len(targets) == 2 and targets[0] == targets[1]
