"""`denoiserlab heatmaps`: a network's heatmap file equals gradient_heatmaps per sigma, resumes per sigma."""

import pytest
import torch

from denoiserlab.analysis import gradient_heatmaps
from denoiserlab.cli import main
from denoiserlab.data import load
from denoiserlab.diffusion import edm_sigmas
from denoiserlab.networks import save_checkpoint
from denoiserlab.networks.build import build_denoiser
from denoiserlab.studies.locality.heatmaps import heatmaps_on_grid, read_heatmaps_file
from tests.test_networks import perturb

TRAINING_DATA = {"source": "fashion-mnist", "subset": 12, "seed": 0}


def tiny_checkpoint(tmp_path, training_data=TRAINING_DATA):
    torch.manual_seed(0)
    den = build_denoiser("mixer", 1, 28, dict(hidden_size=16, depth=1, patch_size=7), training_data=training_data)
    return save_checkpoint(tmp_path / "net", den.eval())


def test_file_matches_gradient_heatmaps_and_resumes(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path)
    out = tmp_path / "maps.npz"
    args = ["heatmaps", "--network", str(path), "--out", str(out), "--steps", "3", "--n-samples", "2",
            "--batch-size", "2", "--seed", "5"]
    assert main(args) == 0
    table = read_heatmaps_file(out)
    sigmas = edm_sigmas(3)
    torch.testing.assert_close(table["sigmas"], sigmas.double())
    assert table["n_samples"] == 2 and table["command"].startswith("denoiserlab heatmaps")
    from denoiserlab.networks import load as load_network
    network = load_network(path).eval().requires_grad_(False)
    train = load(**TRAINING_DATA).as_float()
    for level, sigma in enumerate(sigmas.tolist()):
        expected = gradient_heatmaps(network, train, sigma, 2, 5 + level, 2).same_channel.float()
        torch.testing.assert_close(table["same_channel"][level].float(), expected.half().float())
    on_grid = heatmaps_on_grid(table, sigmas, (1, 28, 28), str(out))  # what a study reads
    assert on_grid["same_channel"].shape == (3, 28, 28, 28, 28)

    out.unlink()  # every sigma is stored: a rerun rebuilds the file without computing any

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a finished sigma")
    monkeypatch.setattr("denoiserlab.cli.heatmaps.gradient_heatmaps", refuse)
    assert main(args) == 0
    torch.testing.assert_close(read_heatmaps_file(out)["same_channel"], table["same_channel"])


def test_network_without_training_data_is_refused(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path, training_data=None)
    assert main(["heatmaps", "--network", str(path), "--out", str(tmp_path / "m.npz"), "--steps", "2"]) == 2
    assert "does not record its training set" in capsys.readouterr().err


def test_out_must_be_npz_or_pt(tmp_path, capsys):
    assert main(["heatmaps", "--network", "shipped:unet-small-fashion-mnist", "--out", str(tmp_path / "m.txt")]) == 2
    assert "--out must end in .npz or .pt" in capsys.readouterr().err


def test_until_converged_chooses_z_per_sigma_and_stores_its_evidence(tmp_path):
    """--until-converged: each sigma's map and counts equal analysis.heatmaps_until_converged with the same options;
    the file carries per-sigma counts and the convergence evidence, and a study's grid reading keeps it per sigma."""
    from denoiserlab.analysis.heatmap_convergence import heatmaps_until_converged
    from denoiserlab.networks import load as load_network

    path = tiny_checkpoint(tmp_path)
    out = tmp_path / "maps.npz"
    assert main(["heatmaps", "--network", str(path), "--out", str(out), "--steps", "2", "--n-samples", "16",
                 "--until-converged", "0.5", "--start-samples", "4", "--groups", "2", "--check-pairs", "2",
                 "--batch-size", "4", "--seed", "3"]) == 0
    table = read_heatmaps_file(out)
    network = load_network(path).eval().requires_grad_(False)
    imageset = load(**TRAINING_DATA)
    for level, sigma in enumerate(edm_sigmas(2).tolist()):
        expected = heatmaps_until_converged(network, imageset.as_float(), sigma, imageset.labels, 4, 16, 0.5, 2, 2,
                                            3 + level, 4, 64)
        assert table["n_samples"][level] == expected["n_samples"]
        torch.testing.assert_close(table["same_channel"][level].float(),
                                   expected["heatmaps"].same_channel.float().half().float())
        assert bool(table["convergence"]["converged"][level]) == expected["converged"]
        assert float(table["convergence"]["flex_change"][level]) == pytest.approx(expected["history"][-1]["change"])
    convergence = table["convergence"]
    assert convergence["half_iou"].shape == (2, 3) and convergence["running_distances"].shape == (2, 1)
    on_grid = heatmaps_on_grid(table, edm_sigmas(2)[1:], (1, 28, 28), str(out))
    assert on_grid["n_samples"] == table["n_samples"][1:]
    assert on_grid["convergence"]["flex_change"].shape == (1,)


def test_until_converged_options_are_checked_first(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    for options, message in ((["--until-converged", "2"], "relative change"),
                             (["--until-converged", "0.02", "--start-samples", "10", "--groups", "4"], "multiple"),
                             (["--until-converged", "0.02", "--n-samples", "16", "--start-samples", "16"], "doubling")):
        assert main(["heatmaps", "--network", str(path), "--out", str(tmp_path / "m.npz"), *options]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_file_records_its_network_and_a_high_z_reference(tmp_path):
    """The file carries the checkpoint's fingerprint (what a study checks) and, with --reference-sigma, an
    independent reference map at the nearest grid sigma with the distance and crop IoU of the file's map to it."""
    from denoiserlab.analysis.heatmap_convergence import mask_iou, relative_distance
    from denoiserlab.networks import load as load_network
    from denoiserlab.studies.common.cache import checkpoint_fingerprint

    path = tiny_checkpoint(tmp_path)
    out = tmp_path / "maps.npz"
    assert main(["heatmaps", "--network", str(path), "--out", str(out), "--steps", "3", "--n-samples", "2",
                 "--batch-size", "2", "--seed", "5", "--reference-sigma", "0.1", "--reference-samples", "6"]) == 0
    table = read_heatmaps_file(out)
    assert table["network_fingerprint"] == checkpoint_fingerprint(path)
    (path / "README.md").write_text("shipped with notes")  # notes beside the weights: the same network
    assert checkpoint_fingerprint(path) == table["network_fingerprint"]
    sigmas = edm_sigmas(3)
    level = int((sigmas.log() - torch.tensor(0.1).log()).abs().argmin())  # the middle sigma of 80, ~2.5, 0.002
    assert level == 1
    network = load_network(path).eval().requires_grad_(False)
    imageset = load(**TRAINING_DATA)
    reference = gradient_heatmaps(network, imageset.as_float(), sigmas[level].item(), 6, 5 + 10_000 + level, 2,
                                  sampling="systematic", labels=imageset.labels).same_channel.float()
    shipped = gradient_heatmaps(network, imageset.as_float(), sigmas[level].item(), 2, 5 + level, 2).same_channel
    convergence = table["convergence"]
    assert float(convergence["reference_sigma"]) == pytest.approx(sigmas[level].item())
    assert int(convergence["reference_n_samples"]) == 6
    assert float(convergence["reference_distance"]) == pytest.approx(relative_distance(shipped.float(), reference),
                                                                     rel=1e-5)
    expected_iou = [mask_iou(shipped.float(), reference, lam) for lam in (0.3, 0.6, 0.9)]
    torch.testing.assert_close(convergence["reference_iou"].double(), torch.tensor(expected_iou, dtype=torch.float64))


def test_reference_options_are_checked_first(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    for options, message in ((["--reference-sigma", "0"], "--reference-sigma"),
                             (["--reference-sigma", "nan"], "--reference-sigma"),
                             (["--reference-sigma", "1", "--reference-samples", "0"], "--reference-samples")):
        assert main(["heatmaps", "--network", str(path), "--out", str(tmp_path / "m.npz"), *options]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_study_refuses_heatmaps_of_another_checkpoint(tmp_path):
    """A heatmap file records the checkpoint it was computed from: naming it for another network is one error
    before any stage; a file that does not record one is accepted and reported as unverified (None)."""
    from denoiserlab.errors import DenoiserLabError
    from denoiserlab.studies.common.cache import checkpoint_fingerprint
    from denoiserlab.studies.locality.heatmaps import check_heatmaps_network

    path = tiny_checkpoint(tmp_path)
    out = tmp_path / "maps.npz"
    assert main(["heatmaps", "--network", str(path), "--out", str(out), "--steps", "2", "--n-samples", "1",
                 "--batch-size", "1"]) == 0
    table = read_heatmaps_file(out)
    assert check_heatmaps_network(table, checkpoint_fingerprint(path), str(out), "tiny") is True
    with pytest.raises(DenoiserLabError, match="another checkpoint"):
        check_heatmaps_network(table, "0" * 20, str(out), "other")
    assert check_heatmaps_network({**table, "network_fingerprint": None}, "0" * 20, str(out), "other") is None


def test_levels_split_the_work_and_the_last_run_writes_the_file(tmp_path, capsys):
    """--levels: each run computes its own grid levels into OUT's .parts folder; a run that finds every level
    finished writes the file, the same as one run over the whole grid."""
    path = tiny_checkpoint(tmp_path)
    common = ["heatmaps", "--network", str(path), "--steps", "3", "--n-samples", "2", "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "whole.npz")]) == 0
    split = tmp_path / "split.npz"
    assert main([*common, "--out", str(split), "--levels", "0-1"]) == 0
    assert not split.exists() and "not finished yet: [2]" in capsys.readouterr().out
    assert main([*common, "--out", str(split), "--levels", "2"]) == 0
    torch.testing.assert_close(read_heatmaps_file(split)["same_channel"],
                               read_heatmaps_file(tmp_path / "whole.npz")["same_channel"])
    for bad in ("1-0", "0-3", "x"):
        assert main([*common, "--out", str(tmp_path / "bad.npz"), "--levels", bad]) == 2
        assert "--levels" in capsys.readouterr().err


def test_a_run_finishing_after_the_others_started_writes_the_file(tmp_path, monkeypatch):
    """Two --levels runs started together: the one whose own levels end last finds the other's levels finished
    then (not at its start) and writes the file."""
    import shutil

    from denoiserlab.cli import heatmaps as heatmaps_cli

    path = tiny_checkpoint(tmp_path)
    common = ["heatmaps", "--network", str(path), "--steps", "3", "--n-samples", "2", "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "whole.npz")]) == 0
    split = tmp_path / "split.npz"
    real = heatmaps_cli.gradient_heatmaps

    def other_run_finishes_meanwhile(*args, **kwargs):  # levels 0-1 land while this run computes level 2
        for stage in sorted((tmp_path / "whole.npz.parts" / "stages").glob("level-0[01]-*")):
            shutil.copyfile(stage, tmp_path / "split.npz.parts" / "stages" / stage.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmaps_cli, "gradient_heatmaps", other_run_finishes_meanwhile)
    assert main([*common, "--out", str(split), "--levels", "2"]) == 0
    torch.testing.assert_close(read_heatmaps_file(split)["same_channel"],
                               read_heatmaps_file(tmp_path / "whole.npz")["same_channel"])


def criterion_unreachable_below_10(monkeypatch) -> list[float]:
    """The tiny network meets any tolerance everywhere, so below sigma = 10 the criterion is made unreachable
    (tolerance 0); returns the list of sigmas the command runs heatmaps_until_converged at."""
    from denoiserlab.cli import heatmaps as cli_heatmaps

    computed, original = [], cli_heatmaps.heatmaps_until_converged

    def unreachable_below_10(network, train, sigma, labels, start, cap, tolerance, *rest, **options):
        computed.append(sigma)
        return original(network, train, sigma, labels, start, cap, tolerance if sigma > 10 else 0.0, *rest,
                        **options)

    monkeypatch.setattr(cli_heatmaps, "heatmaps_until_converged", unreachable_below_10)
    return computed


def counted_rounds(monkeypatch, interrupt_at: int | None = None) -> list[tuple[float, int]]:
    """(sigma, z count) of every round of z that heatmaps_until_converged draws; with interrupt_at, the draw of that
    index raises KeyboardInterrupt instead (a kill in the middle of a sigma)."""
    from denoiserlab.analysis import heatmap_convergence
    from denoiserlab.analysis.heatmaps import gradient_heatmaps as original

    drawn = []

    def counted(den, images, sigma, n_samples, *args, **kwargs):
        if len(drawn) == interrupt_at:
            raise KeyboardInterrupt
        drawn.append((sigma, n_samples))
        return original(den, images, sigma, n_samples, *args, **kwargs)

    monkeypatch.setattr(heatmap_convergence, "gradient_heatmaps", counted)
    return drawn


CONVERGED_OPTIONS = ["--until-converged", "0.02", "--start-samples", "2", "--groups", "2",
                     "--check-pairs", "2", "--batch-size", "2", "--seed", "3"]


def test_larger_cap_reuses_levels_that_met_the_criterion_and_recomputes_the_others(tmp_path, monkeypatch):
    """Rerun with a larger --n-samples: sigmas that met the criterion under the smaller cap are taken from the .parts
    folder, the others go on under the new cap from the rounds of z the smaller cap drew (only the new rounds are
    drawn), and the file equals a run with the larger cap from the start."""
    computed = criterion_unreachable_below_10(monkeypatch)
    path = tiny_checkpoint(tmp_path)
    options = ["--network", str(path), "--steps", "3", *CONVERGED_OPTIONS]
    out = tmp_path / "maps.npz"
    assert main(["heatmaps", "--out", str(out), "--n-samples", "4", *options]) == 0
    assert read_heatmaps_file(out)["convergence"]["converged"].tolist() == [True, False, False]
    computed.clear()
    out.unlink()
    drawn = counted_rounds(monkeypatch)
    assert main(["heatmaps", "--out", str(out), "--n-samples", "8", *options]) == 0
    assert computed == edm_sigmas(3).tolist()[1:]  # sigma = 80 taken from the parts
    assert drawn == [(sigma, 4) for sigma in edm_sigmas(3).tolist()[1:]]  # rounds of 2 and 2 z kept from cap 4
    fresh = tmp_path / "fresh.npz"
    assert main(["heatmaps", "--out", str(fresh), "--n-samples", "8", *options]) == 0
    extended, expected = read_heatmaps_file(out), read_heatmaps_file(fresh)
    assert extended["n_samples"] == expected["n_samples"] == [4, 8, 8]
    assert torch.equal(extended["same_channel"], expected["same_channel"])
    assert torch.equal(extended["convergence"]["converged"], expected["convergence"]["converged"])


def test_a_sigma_killed_between_rounds_of_z_resumes_at_its_first_unfinished_round(tmp_path, monkeypatch):
    """Under --until-converged each finished round of z is kept in the .parts folder: rerun after a kill inside a
    sigma, the command draws only the rounds it had not finished and writes the file an uninterrupted run writes.
    Rounds of a sigma that met the criterion are removed once the sigma is stored; the others stay for a larger cap."""
    criterion_unreachable_below_10(monkeypatch)
    path = tiny_checkpoint(tmp_path)
    options = ["--network", str(path), "--n-samples", "8", "--steps", "2", *CONVERGED_OPTIONS]
    sigmas = edm_sigmas(2).tolist()
    assert main(["heatmaps", "--out", str(tmp_path / "whole.npz"), *options]) == 0
    out = tmp_path / "maps.npz"
    counted_rounds(monkeypatch, interrupt_at=3)  # sigma 80: 2 rounds (met), then the second round of the next sigma
    assert main(["heatmaps", "--out", str(out), *options]) == 130
    assert not out.exists()
    drawn = counted_rounds(monkeypatch)
    assert main(["heatmaps", "--out", str(out), *options]) == 0
    assert drawn == [(sigmas[1], 2), (sigmas[1], 4)]
    resumed, whole = read_heatmaps_file(out), read_heatmaps_file(tmp_path / "whole.npz")
    for reading in ("same_channel", "n_samples"):
        assert torch.equal(torch.as_tensor(resumed[reading]), torch.as_tensor(whole[reading]))
    for key in ("converged", "flex_change", "relative_se", "half_iou"):
        assert torch.equal(resumed["convergence"][key], whole["convergence"][key])
    stages = tmp_path / "maps.npz.parts" / "stages"
    assert [len(list(stages.glob(f"level-{level:02d}-round-*"))) for level in range(2)] == [0, 3]


def test_colour_images_carry_the_evidence_of_both_readings(tmp_path):
    """RGB emoji: the criterion holds under both readings (a sigma converges only when both PSPC-Flex MSEs are
    stable), and the file carries each reading's evidence and distance to the high-z reference (all_channels_*)."""
    from denoiserlab.analysis.heatmap_convergence import heatmaps_until_converged, relative_distance
    from denoiserlab.networks import load as load_network

    training_data = {"source": "emoji", "subset": 10, "seed": 0}
    torch.manual_seed(0)
    den = build_denoiser("mixer", 3, 32, dict(hidden_size=16, depth=1, patch_size=8), training_data=training_data)
    with torch.no_grad():  # the output layer starts at zero: random weights everywhere make the channels mix
        for parameter in den.parameters():
            parameter.normal_(0, 0.2)
    path = save_checkpoint(tmp_path / "net", den.eval())
    out = tmp_path / "maps.npz"
    assert main(["heatmaps", "--network", str(path), "--out", str(out), "--steps", "2", "--n-samples", "4",
                 "--until-converged", "0.3", "--start-samples", "2", "--groups", "2", "--check-pairs", "2",
                 "--batch-size", "2", "--products-per-pass", "256", "--seed", "3", "--reference-sigma", "80",
                 "--reference-samples", "2"]) == 0
    table = read_heatmaps_file(out)
    convergence = table["convergence"]
    network = load_network(path).eval().requires_grad_(False)
    imageset = load(**training_data)
    for level, sigma in enumerate(edm_sigmas(2).tolist()):
        expected = heatmaps_until_converged(network, imageset.as_float(), sigma, imageset.labels, 2, 4, 0.3, 2, 2,
                                            3 + level, 2, 256)
        by_reading = expected["history"][-1]["by_reading"]
        assert bool(convergence["converged"][level]) == expected["converged"]
        assert expected["converged"] == all(entry["change"] < 0.3 for entry in by_reading.values())
        for reading, prefix in (("same_channel", ""), ("all_channels", "all_channels_")):
            assert float(convergence[prefix + "flex_change"][level]) == pytest.approx(by_reading[reading]["change"])
            torch.testing.assert_close(table[reading][level].float(),
                                       getattr(expected["heatmaps"], reading).float().half().float())
            assert convergence[prefix + "half_iou"].shape == (2, 3)
    assert not torch.equal(table["all_channels"], table["same_channel"])
    reference = gradient_heatmaps(network, imageset.as_float(), 80.0, 2, 3 + 10_000, 2, 256, sampling="systematic",
                                  labels=imageset.labels).all_channels.float()
    assert float(convergence["all_channels_reference_distance"]) == pytest.approx(
        relative_distance(table["all_channels"][0].float(), reference), rel=1e-2)


def counted_batches(monkeypatch, kill_at: int | None = None) -> list[int]:
    """The sizes of the batches of z whose Jacobians the command computes, in order; with kill_at, the batch of that
    index raises KeyboardInterrupt instead, once (a kill in the middle of a round of z)."""
    from denoiserlab.analysis import heatmaps

    calls, original, kill = [], heatmaps.summed_abs_readings, [kill_at]

    def counted(den, z, *args, **kwargs):
        if len(calls) == kill[0]:
            kill[0] = None
            raise KeyboardInterrupt
        calls.append(len(z))
        return original(den, z, *args, **kwargs)

    monkeypatch.setattr(heatmaps, "summed_abs_readings", counted)
    return calls


@pytest.mark.parametrize("mode, kill_at, left", [("converged", 5, [2]), ("fixed", 3, [2])])
def test_a_kill_inside_a_computation_costs_only_the_unfinished_batch_of_z(tmp_path, monkeypatch, mode, kill_at,
                                                                          left):
    """The running sums of z are kept in the .parts folder (here after every batch): killed in the second batch of
    a round of 4 z (until-converged: rounds 2 + 2 at sigma 80, then 2 + 2 + 4) or of a sigma's 4 z (fixed count),
    the rerun computes only that batch, writes the file an uninterrupted run writes and leaves no running sums."""
    from denoiserlab.cli import heatmaps as cli_heatmaps

    monkeypatch.setattr(cli_heatmaps, "SUMS_INTERVAL_SECONDS", 0.0)
    criterion_unreachable_below_10(monkeypatch)
    path = tiny_checkpoint(tmp_path)
    options = ["--network", str(path), "--steps", "2", "--batch-size", "2", "--seed", "3"]
    options += ["--n-samples", "8", *CONVERGED_OPTIONS] if mode == "converged" else ["--n-samples", "4"]
    assert main(["heatmaps", "--out", str(tmp_path / "whole.npz"), *options]) == 0
    out = tmp_path / "maps.npz"
    counted_batches(monkeypatch, kill_at=kill_at)
    assert main(["heatmaps", "--out", str(out), *options]) == 130
    stages = tmp_path / "maps.npz.parts" / "stages"
    assert len(list(stages.glob("partial-*"))) == 1
    calls = counted_batches(monkeypatch)
    assert main(["heatmaps", "--out", str(out), *options]) == 0
    assert calls == left
    assert not list(stages.glob("partial-*"))
    resumed, whole = read_heatmaps_file(out), read_heatmaps_file(tmp_path / "whole.npz")
    for reading in ("same_channel", "all_channels"):
        assert torch.equal(resumed[reading], whole[reading])


def test_a_run_opening_a_shared_parts_folder_leaves_fresh_temporary_files_alone(tmp_path):
    """--levels runs share OUT's .parts folder and may start at different times: opening it removes the temporary
    files of killed writes (untouched for ten minutes) but not one that another process is writing now."""
    import os

    from denoiserlab.studies.common.cache import StageCache

    stages = tmp_path / "maps.npz.parts" / "stages"
    stages.mkdir(parents=True)
    writing, killed = stages / ".level-03-abc.safetensors.x1.tmp", stages / ".level-09-def.safetensors.x2.tmp"
    writing.write_bytes(b"half written by another process")
    killed.write_bytes(b"left by kill -9")
    os.utime(killed, (killed.stat().st_mtime - 601, killed.stat().st_mtime - 601))
    StageCache(tmp_path / "maps.npz.parts")
    assert writing.exists() and not killed.exists()


def test_bfloat16_maps_are_stored_apart_from_float32_ones_and_close_to_them(tmp_path, monkeypatch):
    torch.manual_seed(0)
    den = build_denoiser("mixer", 1, 28, dict(hidden_size=16, depth=1, patch_size=7), training_data=TRAINING_DATA)
    perturb(den)  # an untrained mixer's output layer is zero: D = c_skip x, whose Jacobian no precision changes
    path = save_checkpoint(tmp_path / "net", den.eval())
    out = tmp_path / "maps.npz"
    args = ["heatmaps", "--network", str(path), "--out", str(out), "--steps", "2", "--n-samples", "2",
            "--batch-size", "2", "--seed", "5"]
    assert main(args) == 0
    exact = read_heatmaps_file(out)
    out.unlink()  # same .parts folder: the float32 sigmas there must not be taken for bfloat16 ones
    monkeypatch.setattr("sys.argv", ["denoiserlab", *args, "--precision", "bfloat16"])  # the file records it
    assert main(args + ["--precision", "bfloat16"]) == 0
    lowered = read_heatmaps_file(out)
    assert "--precision bfloat16" in lowered["command"]
    difference = (lowered["same_channel"].double() - exact["same_channel"].double()).norm()
    assert 0 < difference < 0.02 * exact["same_channel"].double().norm()
