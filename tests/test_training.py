"""Training: EDM loss and weight by hand, warm-up, EMA half-life, exact resume, outputs, config files and errors."""

import argparse
import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from denoiserlab.cli import train as train_cli
from denoiserlab.denoisers import OptimalDenoiser
from denoiserlab.errors import DenoiserLabError
from denoiserlab.networks import load_checkpoint
from denoiserlab.networks.ema import ema_beta, update_ema
from denoiserlab.networks.loss import SigmaDistribution, edm_loss, edm_loss_weight, sample_training_sigmas
from denoiserlab.networks.training import learning_rate, new_run, run_training
from denoiserlab.networks.training_config import TrainConfig, train_config_from_dict

TINY_RUN = dict(subset=64, resolution=8, resolution_policy="resize", arch="unet", batch_size=16,
                checkpoint_kimg=0.064, log_kimg=0.032, sample_count=4, sample_steps=2, lr_rampup_kimg=0.05,
                ema_halflife_kimg=0.05,
                network=dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                             channels_per_head=8, dropout=0.2))


def test_edm_loss_weight_by_hand():
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2 (Karras et al. 2022, Table 1)."""
    for s in (0.002, 0.3, 1.0, 80.0):
        weight = float(edm_loss_weight(torch.tensor(s, dtype=torch.float64)))
        assert math.isclose(weight, (s * s + 0.25) / (s * 0.5) ** 2, rel_tol=1e-12)
        c_out = s * 0.5 / math.sqrt(s * s + 0.25)
        assert math.isclose(weight * c_out**2, 1.0, rel_tol=1e-12)


def test_training_sigmas_are_log_normal():
    log_sigma = sample_training_sigmas(20000, torch.Generator().manual_seed(0)).log().double()
    assert abs(float(log_sigma.mean()) + 1.2) < 0.05 and abs(float(log_sigma.std()) - 1.2) < 0.05


def test_sigma_mixture_draws_its_log_uniform_share_over_the_range():
    """A share f of the draws is log-uniform on [sigma_min, sigma_max]: the share of ln(sigma) above ln(20) is
    f * ln(80/20) / ln(80/0.002) plus the log-normal tail, and no draw leaves the log-normal's reach or the range."""
    distribution = SigmaDistribution(loguniform_fraction=0.5, sigma_min=0.002, sigma_max=80.0)
    sigma = distribution.sample(200_000, torch.Generator().manual_seed(0)).double()
    lognormal_tail = 0.5 * 0.5 * math.erfc((math.log(20) + 1.2) / (1.2 * math.sqrt(2)))
    expected = 0.5 * math.log(80 / 20) / math.log(80 / 0.002) + lognormal_tail
    assert abs(float((sigma > 20).double().mean()) - expected) < 0.003
    in_band = (sigma > 1e-3) & (sigma < 1e-2)  # mostly log-uniform mass: 0.5 * ln(5) / ln(40000) = 7.6 %
    assert abs(float(in_band.double().mean()) - 0.5 * math.log(0.01 / 0.002) / math.log(40000)
               - 0.5 * 0.5 * (math.erfc((math.log(1e-3) + 1.2) / (1.2 * math.sqrt(2)))
                              - math.erfc((math.log(1e-2) + 1.2) / (1.2 * math.sqrt(2))))) < 0.003


def test_sigma_distribution_without_mixture_is_edms_stream():
    """fraction 0 draws exactly the log-normal stream (runs started before the option reproduce bitwise)."""
    a = SigmaDistribution().sample(50, torch.Generator().manual_seed(4))
    b = (torch.randn(50, generator=torch.Generator().manual_seed(4)) * 1.2 - 1.2).exp()
    assert torch.equal(a, b)


@pytest.mark.parametrize("options", [dict(sigma_loguniform_fraction=1.5), dict(sigma_loguniform_fraction=-0.1),
                                     dict(sigma_min=0.0), dict(sigma_min=5.0, sigma_max=1.0),
                                     dict(sigma_max=math.inf), dict(kimg=math.inf), dict(lr_decay_kimg=-1.0), dict(target="mean")])
def test_bad_sigma_and_schedule_options_are_refused(options):
    with pytest.raises(DenoiserLabError):
        TrainConfig(out="x", **options)


def test_learning_rate_inverse_square_root_decay():
    """EDM2 eq. 16: lr / sqrt(max(kimg / decay, 1)) after the warm-up."""
    config = TrainConfig(out="x", lr=1e-3, lr_rampup_kimg=0.0, lr_decay_kimg=10.0)
    assert learning_rate(config, 5000) == pytest.approx(1e-3)
    assert learning_rate(config, 40000) == pytest.approx(1e-3 / 2)


def test_init_starts_from_a_checkpoints_weights(tmp_path):
    """init copies a checkpoint's weights exactly; a checkpoint of another network config is refused."""
    first = run_training(TrainConfig(out=str(tmp_path / "a"), kimg=0.032, **TINY_RUN), progress=False)
    config = TrainConfig(out=str(tmp_path / "b"), kimg=0.016, init=str(first), **TINY_RUN)
    run = new_run(config, (1, 8, 8), {}, torch.device("cpu"))
    for name, value in load_checkpoint(first).state_dict().items():
        torch.testing.assert_close(run.denoiser.state_dict()[name], value, rtol=0, atol=0)
        torch.testing.assert_close(run.ema.state_dict()[name], value, rtol=0, atol=0)
    other = dict(TINY_RUN, network=dict(TINY_RUN["network"], model_channels=16))
    with pytest.raises(DenoiserLabError, match="init checkpoint"):
        new_run(TrainConfig(out=str(tmp_path / "c"), init=str(first), **other), (1, 8, 8), {}, torch.device("cpu"))


def test_edm_loss_matches_a_per_sample_loop():
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1

    def den(x, sigma):  # a simple denoiser with per-sample sigma: shrink towards 0
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    state = generator.get_state()
    loss = edm_loss(den, x0, generator)
    generator.set_state(state)
    sigmas = (torch.randn(4, generator=generator) * 1.2 - 1.2).exp()
    eps = torch.randn(x0.shape, generator=generator)
    for i in range(4):
        s = float(sigmas[i])
        x = x0[i] + s * eps[i].double()
        error = ((x / (1 + s * s) - x0[i]) ** 2).mean().item()
        assert math.isclose(float(loss[i]), (s * s + 0.25) / (s * 0.5) ** 2 * error, rel_tol=1e-5)


def test_posterior_target_is_the_softmax_mean_of_the_training_set():
    """target='posterior' regresses on E[x0 | x_t] = sum_i softmax_i(-|x_t - x_i|^2 / 2 sigma^2) x_i (a float64 loop
    here); sigma and eps are drawn exactly as with x0 targets."""
    train = torch.rand(6, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x0 = train[[0, 3, 5, 1]]

    def den(x, sigma):
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    loss = edm_loss(den, x0, torch.Generator().manual_seed(7), posterior_mean=OptimalDenoiser(train))
    generator = torch.Generator().manual_seed(7)
    sigmas = (torch.randn(4, generator=generator) * 1.2 - 1.2).exp()
    eps = torch.randn(x0.shape, generator=generator)
    for i in range(4):
        s = float(sigmas[i])
        x = x0[i] + s * eps[i].double()
        logits = [-((x - image) ** 2).sum().item() / (2 * s * s) for image in train]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        target = sum(w * image for w, image in zip(weights, train)) / sum(weights)
        error = ((x / (1 + s * s) - target) ** 2).mean().item()
        assert math.isclose(float(loss[i]), (s * s + 0.25) / (s * 0.5) ** 2 * error, rel_tol=1e-5, abs_tol=1e-9)


def test_learning_rate_warm_up_and_ema_half_life():
    config = TrainConfig(out="x", lr=1e-3, lr_rampup_kimg=10.0)
    assert learning_rate(config, 5000) == pytest.approx(5e-4) and learning_rate(config, 20000) == 1e-3
    beta = ema_beta(batch_size=100, nimg=10**9, halflife_kimg=2.0, rampup_ratio=0.05)
    assert beta ** (2000 / 100) == pytest.approx(0.5)  # half the weight is forgotten after one half-life
    assert ema_beta(100, nimg=4000, halflife_kimg=2.0, rampup_ratio=0.05) ** 2 == pytest.approx(0.5)  # 200 images


def test_update_ema_by_hand():
    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [0.9 * e.detach() + 0.1 * m.detach() for e, m in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.9)
    for value, wanted in zip(ema.parameters(), expected):
        torch.testing.assert_close(value.detach(), wanted)


def test_posterior_target_run_trains_and_resumes(tmp_path):
    """A short run with target='posterior' and the sigma mixture writes its checkpoints; a rerun to more kimg
    resumes it (an option added later counts as its default in older run folders)."""
    options = dict(TINY_RUN, target="posterior", sigma_loguniform_fraction=0.5)
    run_training(TrainConfig(out=str(tmp_path / "p"), kimg=0.032, **options), progress=False)
    saved_path = tmp_path / "p" / "training_config.json"
    older = {key: value for key, value in json.loads(saved_path.read_text()).items() if key != "lr_decay_kimg"}
    saved_path.write_text(json.dumps(older))  # as written before the option existed
    network = run_training(TrainConfig(out=str(tmp_path / "p"), kimg=0.064, **options), progress=False)
    assert network.name == "network-000000" and (tmp_path / "p" / "loss.csv").is_file()
    saved = json.loads((tmp_path / "p" / "training_config.json").read_text())
    assert saved["target"] == "posterior" and saved["sigma_loguniform_fraction"] == 0.5


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """Stop after 3 steps (as after a kill), rerun to 6: weights, EMA and losses equal a 6-step run bitwise."""
    options = dict(TINY_RUN, checkpoint_kimg=0.048, log_kimg=0.016)
    run_training(TrainConfig(out=str(tmp_path / "a"), kimg=0.096, **options), progress=False)
    run_training(TrainConfig(out=str(tmp_path / "b"), kimg=0.048, **options), progress=False)
    run_training(TrainConfig(out=str(tmp_path / "b"), kimg=0.096, **options), progress=False)
    state_a = torch.load(tmp_path / "a" / "training-state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "training-state.pt", weights_only=True)
    assert state_a["step"] == state_b["step"] == 6
    for part in ("model", "ema"):
        for name, value in state_a[part].items():
            assert torch.equal(value, state_b[part][name]), (part, name)
    assert [row[2] for row in state_a["history"]] == [row[2] for row in state_b["history"]]


def test_run_outputs_and_checkpoint(tmp_path):
    network = run_training(TrainConfig(out=str(tmp_path), kimg=0.128, xflip=True, **TINY_RUN), progress=False)
    assert network == tmp_path / "network-000000"
    with open(tmp_path / "loss.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4 and all(math.isfinite(float(row["loss"])) for row in rows)
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "samples-000000.png").stat().st_size > 0
    den = load_checkpoint(network)
    assert den.training_data["xflip"] is True and den.training_data["subset"] == 64
    assert not any(path.name.endswith(".tmp") for path in tmp_path.rglob("*"))


def test_training_lowers_the_loss(tmp_path):
    """64 steps of Adam at a fixed learning rate: the last 16 losses average below the first 16."""
    options = dict(TINY_RUN, lr=2e-3, lr_rampup_kimg=0.0, log_kimg=0.016, checkpoint_kimg=10.0,
                   network=dict(TINY_RUN["network"], dropout=0.0))
    run_training(TrainConfig(out=str(tmp_path), kimg=1.024, **options), progress=False)
    with open(tmp_path / "loss.csv") as file:
        losses = [float(row["loss"]) for row in csv.DictReader(file)]
    assert len(losses) == 64 and sum(losses[-16:]) < 0.8 * sum(losses[:16])


def test_one_line_per_checkpoint(tmp_path, capsys):
    run_training(TrainConfig(out=str(tmp_path), kimg=0.128, **TINY_RUN), progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["0.1 kimg (step 4)", "0.1 kimg (step 8)"]  # 64, 128 images
    assert lines[-1].endswith(f"-> {tmp_path / 'network-000000'}") and "loss " in lines[-1]


def test_resume_with_other_options_fails(tmp_path):
    run_training(TrainConfig(out=str(tmp_path), kimg=0.016, **TINY_RUN), progress=False)
    with pytest.raises(DenoiserLabError, match="batch_size"):
        run_training(TrainConfig(out=str(tmp_path), kimg=0.032, **dict(TINY_RUN, batch_size=8)), progress=False)


def test_bfloat16_precision_trains_close_to_float32_and_may_change_on_resume(tmp_path):
    """precision='bfloat16' runs the network under CPU autocast: the losses differ from float32's by rounding only,
    the saved weights stay float32, and a run may switch precision when it resumes."""
    options = dict(TINY_RUN, network=dict(TINY_RUN["network"], dropout=0.0), checkpoint_kimg=0.032, log_kimg=0.016)
    histories = {}
    for precision in ("float32", "bfloat16"):
        run_training(TrainConfig(out=str(tmp_path / precision), kimg=0.032, precision=precision, **options),
                     progress=False)
        state = torch.load(tmp_path / precision / "training-state.pt", weights_only=True)
        assert all(value.dtype == torch.float32 for value in state["model"].values() if value.is_floating_point())
        histories[precision] = torch.tensor([row[2] for row in state["history"]])
    assert not torch.equal(histories["float32"], histories["bfloat16"])  # autocast was on
    assert torch.allclose(histories["float32"], histories["bfloat16"], rtol=0.05)
    run_training(TrainConfig(out=str(tmp_path / "bfloat16"), kimg=0.048, precision="float32", **options),
                 progress=False)
    with pytest.raises(DenoiserLabError, match="precision"):
        TrainConfig(out="r", precision="float16")


def parse(argv):
    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_toml_config_and_flags(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('arch = "dit-small"\nkimg = 5\nxflip = true\n[network]\ndepth = 2\n')
    config = train_cli.config_from_args(parse(["train", "--config", str(path), "--out", "r", "--kimg", "7",
                                               "--network", "dropout=0.1"]))
    assert (config.arch, config.kimg, config.xflip, config.out) == ("dit-small", 7.0, True, "r")
    assert config.network == {"depth": 2, "dropout": 0.1} and config.batch_size == TrainConfig.batch_size


def test_every_option_is_a_flag_with_help():
    values = {"out": "r", "data": "d", "resolution_policy": "crop", "arch": "dit-small", "init": "i", "target": "t",
              "device": "cpu"}
    argv, expected = ["train"], {}
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata["help"], field.name
        if field.name in train_cli.SPECIAL_FIELDS:
            continue
        kind = train_cli.FLAGS[field.name]
        value = values.get(field.name, {int: 3, float: 0.25, str: "s"}[kind])
        argv += ["--" + field.name.replace("_", "-"), str(value)]
        expected[field.name] = value
    argv += ["--classes", "1", "2", "--no-xflip", "--network", "depth=2"]
    args = parse(argv)
    assert {name: getattr(args, name) for name in expected} == expected
    assert (args.classes, args.xflip, args.network) == ([1, 2], False, ["depth=2"])
    subparsers = argparse.ArgumentParser().add_subparsers()
    train_cli.add_parser(subparsers)
    assert "Adam learning rate after the warm-up (default: 0.001)" in subparsers.choices["train"].format_help()


@pytest.mark.parametrize("text,match", [
    ('arch = "unet-small"\nlearning_rate = 1e-3\n', "learning_rate"),
    ('kimg = "ten"\n', "kimg"),
    ('arch = "resnet"\n', "unknown network preset"),
    ('[network]\nwidth = 3\n', "width"),
    ('batch_size = 0\n', "batch_size"),
    ('kimg = [1\n', "not valid TOML"),
])
def test_bad_toml_fails_naming_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DenoiserLabError, match=match):
        train_cli.config_from_args(parse(["train", "--config", str(path), "--out", "r"]))


def test_missing_out_and_cuda_fail():
    with pytest.raises(DenoiserLabError, match="out"):
        train_config_from_dict({})
    if not torch.cuda.is_available():
        with pytest.raises(DenoiserLabError, match="CUDA"):
            run_training(TrainConfig(out="unused", device="cuda"), progress=False)


def test_resolved_config_is_written(tmp_path):
    run_training(TrainConfig(out=str(tmp_path), kimg=0.016, **TINY_RUN), progress=False)
    saved = json.loads((tmp_path / "training_config.json").read_text())
    assert train_config_from_dict(saved) == TrainConfig(out=str(tmp_path), kimg=0.016, **TINY_RUN)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_cuda_mixed_precision_run_loads_on_cpu(tmp_path):
    network = run_training(TrainConfig(out=str(tmp_path), kimg=0.032, device="cuda", **TINY_RUN), progress=False)
    den = load_checkpoint(network)
    assert torch.isfinite(den(torch.zeros(2, 1, 8, 8), 1.0)).all()


@pytest.mark.parametrize("name", ["train-unet-small", "train-dit-small", "train-mixer-small",
                                  "train-unet-small-memorize"])
def test_shipped_train_configs_are_valid(name):
    path = Path(__file__).parents[1] / "configs" / f"{name}.toml"
    config = train_cli.config_from_args(parse(["train", "--config", str(path), "--out", "r"]))
    assert config.data == "fashion-mnist" and config.xflip is False


def test_leftovers_of_a_killed_write_are_removed_on_resume(tmp_path):
    run_training(TrainConfig(out=str(tmp_path), kimg=0.016, **TINY_RUN), progress=False)
    (tmp_path / ".loss.png.abc123.tmp").write_bytes(b"half a png")
    (tmp_path / ".network-000000.xyz.tmp").mkdir()
    run_training(TrainConfig(out=str(tmp_path), kimg=0.032, **TINY_RUN), progress=False)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize("target", ["sample", "posterior"])
def test_micro_batches_take_the_whole_batch_step(target):
    """Two steps of batch 7 in micro-batches of 3 (3 + 3 + 1 images, gradients added) against one pass of all 7: the
    same losses, weights, Adam moments and EMA (dropout off: its masks are drawn per pass)."""
    from denoiserlab.networks.training import posterior_target, training_step

    train = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    states = []
    for micro in (3, 7):
        config = TrainConfig(out="unused", **{**TINY_RUN, "batch_size": 7, "micro_batch_size": micro, "target": target,
                                              "network": {**TINY_RUN["network"], "dropout": 0.0}})
        run = new_run(config, (1, 8, 8), None, torch.device("cpu"))
        losses = [training_step(run, config, train, posterior_target(config, train)) for _ in range(2)]
        states.append((losses, run.denoiser.state_dict(), run.ema.state_dict(), run.optimizer.state_dict()["state"]))
    (losses, weights, ema, moments), (whole_losses, whole_weights, whole_ema, whole_moments) = states
    assert losses == pytest.approx(whole_losses, rel=1e-6)
    torch.testing.assert_close(weights, whole_weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(ema, whole_ema, rtol=0, atol=1e-6)
    for moment, whole in zip(moments.values(), whole_moments.values()):
        torch.testing.assert_close(moment, whole, rtol=1e-5, atol=1e-8)  # float summation order


def test_micro_batches_default_to_at_most_32_images_on_a_cpu_and_one_pass_elsewhere():
    from denoiserlab.networks.training import CPU_MICRO_BATCH, micro_batches

    assert CPU_MICRO_BATCH == 32
    assert micro_batches(slice(None), 70, torch.device("cpu")) == [slice(0, 32), slice(32, 64), slice(64, 70)]
    assert micro_batches(slice(0, 70), 70, torch.device("cpu"), 64) == [slice(0, 64), slice(64, 70)]
    assert micro_batches(slice(2, 5), 8, torch.device("meta")) == [slice(2, 5)]  # a GPU: one pass
    assert micro_batches(slice(2, 5), 8, torch.device("meta"), 2) == [slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_micro_batch_size_must_be_a_positive_integer(value):
    with pytest.raises(DenoiserLabError, match="micro_batch_size"):
        TrainConfig(out="r", micro_batch_size=value)


def test_the_gpu_config_of_the_wide_60k_unet_is_valid():
    """configs/train-unet-wide-full.toml, which scripts/gpu_unet_full.sh trains, loads as a TrainConfig."""
    path = Path(__file__).parents[1] / "configs" / "train-unet-wide-full.toml"
    config = train_cli.config_from_args(parse(["train", "--config", str(path), "--out", "r"]))
    assert config.data == "fashion-mnist-full" and config.network["model_channels"] == 64
    assert config.target == "posterior" and config.checkpoint_kimg == 50
