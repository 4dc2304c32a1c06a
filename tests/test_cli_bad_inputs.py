"""Bad and edge inputs through the command line (issue 15), run in `denoiserlab` processes apart from pytest.

Every case asserts the whole outcome: exit code 2, no traceback, exactly one `denoiserlab: error: ...` line on stderr
(progress bars aside) naming the problem, and no file created, changed or removed in the case's folder.

A process costs ~2-3 s of imports (torch), so most cases share a few driver processes: each runs the console
script's entry point `denoiserlab.cli.main(args)` once per case, in the case's folder, with that call's stdout and
stderr captured apart and any escaping exception recorded as a traceback, so the assertion stays exact per case.
Cases that need a process of their own (a FIFO that could block, the usage error of the real console script, Ctrl-C)
get one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

SMALL = ["--subset", "10", "--n", "1", "--steps", "1"]  # sample on 10 training images: starts in a blink
TINY_TRAIN = ["--subset", "4", "--kimg", "0.002", "--batch-size", "2", "--arch", "mixer", "--network", "hidden_size=8",
              "--network", "depth=1", "--network", "patch_size=7", "--sample-count", "1", "--sample-steps", "1",
              "--device", "cpu", "--no-progress"]
PROGRESS = re.compile(r"\|\s*[\d.]+[kM]?/[\d.]+[kM]?\s*\[|it/s\]|s/it\]")  # a tqdm bar, not a message
PROCESS_SECONDS = 300


def command() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).with_name("denoiserlab")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from denoiserlab.cli import main; sys.exit(main())"]


@dataclass
class Case:
    id: str
    args: list[str]  # after `denoiserlab`, run in the case's own folder
    expect: str  # regex the error line must contain
    setup: Callable[[Path], None] | None = None  # writes the case's input files into its folder
    needs: Callable[[], bool] = lambda: True  # whether this machine can run the case
    unmet: str = "needs a user without root rights"  # why it is skipped where `needs` is False
    own_process: bool = False  # run as the real console script in a process of its own


def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def labelled_folder(labels: list) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        from PIL import Image

        (folder / "set").mkdir()
        for i in range(len(labels)):
            Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(folder / "set" / f"{i}.png")
        table = {"labels": [[f"{i}.png", label] for i, label in enumerate(labels)]}
        (folder / "set" / "dataset.json").write_text(json.dumps(table))
    return setup


def negative_label_npz(folder: Path) -> None:
    np.savez(folder / "set.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([1, -4]))


def huge_idx_header(folder: Path) -> None:
    size = (2**32 - 1).to_bytes(4, "big")
    (folder / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + size * 3 + bytes(64))


def nan_network(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from denoiserlab.assets import shipped_path

    shutil.copytree(shipped_path("sweep-fashion-mnist/n16"), folder / "net")
    weights = load_file(str(folder / "net" / "model.safetensors"))
    name = next(key for key, value in weights.items() if value.is_floating_point() and value.numel() > 1)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(folder / "net" / "model.safetensors"), metadata={"format": "denoiserlab-checkpoint"})


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "images.npz")


def checkpoint_folder(folder: Path) -> None:
    from denoiserlab.assets import shipped_path

    shutil.copytree(shipped_path("sweep-fashion-mnist/n16"), folder / "checkpoint")


# Study configs name a network that does not exist: every check under test comes before networks are loaded, and
# a run without the check fails there at once instead of running a whole study.
STUDY = "# my study: comments and all\n[[networks]]\nname = 'unet'\npath = 'no-such-network'\n"
GAUSSIAN = "# my study\n[[networks]]\nname = 'unet'\npath = 'no-such-network'\n"
SCHEDULE_RHO_0 = 'kind = "patch_size"\nvalues = [3, 3]\nrho = 0\n'
NOT_ROOT = lambda: os.geteuid() != 0  # noqa: E731  (root may write anywhere, so permission cases need a user)
NO_CUDA = lambda: not torch.cuda.is_available()  # noqa: E731  (a refused CUDA device needs a machine without one)
NO_GPU = "needs a machine without CUDA"
UNAVAILABLE = r"CUDA is not available on this machine"

CASES = [
    # sample: values that overflowed or were misread
    Case("sample-patch-size-0", ["sample", "--denoiser", "pspc_square", "--patch-size", "0", *SMALL, "--out", "out"],
         r"patch size must be >= 1, got 0"),
    Case("sample-seed-overflow", ["sample", "--seed", str(2**70), *SMALL, "--out", "out"],
         r"--seed must be an integer"),
    Case("sample-data-seed-negative", ["sample", "--data-seed", "-1", *SMALL, "--out", "out"],
         r"--data-seed must be an integer"),
    Case("sample-resolution-100000", ["sample", "--resolution", "100000", *SMALL, "--out", "out"], r"GiB of memory"),
    Case("sample-n-1e9", ["sample", "--n", str(10**9), "--subset", "10", "--steps", "1", "--out", "out"],
         r"sampling 1000000000 images .* GiB of memory"),
    Case("sample-steps-1e9", ["sample", "--steps", str(10**9), "--subset", "10", "--n", "1", "--out", "out"],
         r"--steps must be an integer in \[1, "),
    Case("sample-n-not-a-number", ["sample", "--n", "abc", "--out", "out"], r"argument --n: invalid int value: 'abc'",
         own_process=True),
    Case("sample-xflip-string", ["sample", "--option", 'xflip="no"', *SMALL, "--out", "out"],
         r"xflip must be True or False, got 'no'"),
    Case("sample-rank-bool", ["sample", "--denoiser", "gaussian", "--option", "rank=true", *SMALL, "--out", "out"],
         r"rank must be an integer >= 1, got True"),
    # sample: files that broke a reader
    Case("sample-schedule-rho-0", ["sample", "--denoiser", "pspc_square", "--schedule", "s.toml", *SMALL, "--out",
                                   "out"], r"schedule file 's.toml': rho must be a finite number > 0",
         write("s.toml", SCHEDULE_RHO_0)),
    Case("sample-schedule-not-utf8", ["sample", "--denoiser", "pspc_square", "--schedule", "s.toml", *SMALL, "--out",
                                      "out"], r"cannot parse schedule file 's.toml'", write("s.toml", b"\xff\xfe = 1")),
    Case("sample-masks-npy", ["sample", "--denoiser", "pspc_flex", "--masks", "m.npy", *SMALL, "--out", "out"],
         r"cannot read mask file 'm.npy'", write("m.npy", b"not numpy")),
    Case("sample-masks-pt", ["sample", "--denoiser", "pspc_flex", "--masks", "m.pt", *SMALL, "--out", "out"],
         r"cannot read mask file 'm.pt'", write("m.pt", b"not torch")),
    # sample: outputs and results
    Case("sample-out-is-a-file", ["sample", *SMALL, "--out", "out"], r"--out out is a file, not a folder",
         write("out", "my notes")),
    Case("sample-out-holds-user-files", ["sample", *SMALL, "--out", "out"],
         r"--out out already holds files this command did not write \(notes.txt\)", write("out/notes.txt", "mine")),
    Case("sample-out-not-writable", ["sample", *SMALL, "--out", "locked/out"], r"cannot write in locked",
         lambda folder: (folder / "locked").mkdir(mode=0o555), needs=NOT_ROOT),
    Case("sample-network-nan-weights", ["sample", "--network", "net", "--n", "1", "--steps", "1", "--out", "out"],
         r"network UNet \(\d+ of its \d+ weights are NaN or inf\) returned NaN or inf at sigma = 80", nan_network),
    # data info
    Case("data-empty-source", ["data", "info", "", "--out", "out"], r"source is empty"),
    Case("data-fifo", ["data", "info", "images.npz", "--out", "out"], r"images.npz is not a regular file or folder",
         fifo, own_process=True),
    Case("data-label-overflow", ["data", "info", "set", "--out", "out"],
         r"dataset.json: 'labels' must be .* \[0, 2\*\*31", labelled_folder([0, 2**70])),
    Case("data-label-negative", ["data", "info", "set", "--out", "out"], r"dataset.json: 'labels' must be",
         labelled_folder([0, -1])),
    Case("data-npz-label-negative", ["data", "info", "set.npz", "--out", "out"], r"labels in \[-4, 1\]",
         negative_label_npz),
    Case("data-idx-huge-header", ["data", "info", "train-images-idx3-ubyte", "--out", "out"], r"truncated or corrupt",
         huge_idx_header),
    Case("data-n-0", ["data", "info", "fashion-mnist", "--n", "0", "--out", "out"], r"--n must be an integer >= 1"),
    # study
    Case("study-out-holds-its-config", ["study", "X/config.toml", "--out", "X"],
         r"X/config.toml is not a config that denoiserlab wrote", write("X/config.toml", STUDY)),
    Case("study-bad-rank", ["study", "s.toml", "--out", "out"], r"s.toml: denoisers.gaussian: rank must be",
         write("s.toml", STUDY + "[denoisers.optimal]\n[denoisers.gaussian]\nrank = -3\n")),
    Case("study-missing-schedule", ["study", "s.toml", "--out", "out"], r"schedule file 'nope.toml' does not exist",
         write("s.toml", STUDY + "[denoisers.optimal]\n[denoisers.pspc_square]\nschedule = 'nope.toml'\n")),
    Case("study-out-is-a-file", ["study", "s.toml", "--out", "out"], r"--out out is a file",
         lambda folder: (write("s.toml", STUDY)(folder), write("out", "mine")(folder))),
    Case("gaussian-study-out-holds-its-config", ["gaussian-study", "X/config.toml", "--out", "X"],
         r"X/config.toml is not a config that denoiserlab wrote", write("X/config.toml", GAUSSIAN)),
    Case("gaussian-study-bad-rank", ["gaussian-study", "g.toml", "--out", "out"], r"rank must be",
         write("g.toml", GAUSSIAN + "[denoisers.gaussian]\nrank = -3\n")),
    # heatmaps, train, demo
    Case("heatmaps-out-under-a-file", ["heatmaps", "--network", "shipped:unet-small-fashion-mnist", "--out", "f/h.npz"],
         r"--out f/h.npz: f is a file, not a folder", write("f", "mine")),
    Case("heatmaps-n-samples-0", ["heatmaps", "--network", "shipped:unet-small-fashion-mnist", "--n-samples", "0",
                                  "--out", "h.npz"], r"--n-samples must be an integer >= 1"),
    Case("train-out-is-a-file", ["train", *TINY_TRAIN, "--out", "run"], r"--out run is a file", write("run", "mine")),
    Case("train-seed-overflow", ["train", *TINY_TRAIN, "--seed", str(2**70), "--out", "run"], r"seed"),
    Case("train-checkpoint-kimg-inf", ["train", *TINY_TRAIN, "--checkpoint-kimg", "inf", "--out", "run"],
         r"checkpoint_kimg"),
    Case("train-into-a-checkpoint-folder", ["train", *TINY_TRAIN, "--out", "checkpoint"], r"not a run folder",
         checkpoint_folder),
    Case("demo-n-0", ["demo", "--quick", "--n", "0", "--out", "out"], r"--n must be an integer >= 1"),
    # --device: a misspelt name anywhere, and a CUDA device this machine lacks, before any work
    Case("sample-device-name", ["sample", "--device", "gpu", *SMALL, "--out", "out"],
         r"--device must be 'cpu', 'cuda' or 'cuda:N' \(N = 0, 1, ...\), got 'gpu'"),
    Case("sample-device-past-the-last-gpu", ["sample", "--device", "cuda:999", *SMALL, "--out", "out"],
         rf"--device 'cuda:999': ({UNAVAILABLE}|this machine has \d+ CUDA device)"),
    Case("sample-device-cuda", ["sample", "--device", "cuda", *SMALL, "--out", "out"], UNAVAILABLE, needs=NO_CUDA,
         unmet=NO_GPU),
    Case("heatmaps-device-cuda", ["heatmaps", "--network", "shipped:unet-small-fashion-mnist", "--device", "cuda",
                                  "--out", "h.npz"], rf"--device 'cuda': {UNAVAILABLE}", needs=NO_CUDA, unmet=NO_GPU),
    Case("study-device-cuda", ["study", "s.toml", "--device", "cuda", "--out", "out"],
         rf"--device 'cuda': {UNAVAILABLE}", write("s.toml", STUDY), needs=NO_CUDA, unmet=NO_GPU),
    Case("study-config-device-cuda", ["study", "s.toml", "--out", "out"], rf"s.toml: device 'cuda:0': {UNAVAILABLE}",
         write("s.toml", "device = 'cuda:0'\n" + STUDY), needs=NO_CUDA, unmet=NO_GPU),
    Case("study-config-device-name", ["study", "s.toml", "--out", "out"], r"s.toml: device must be 'cpu', 'cuda'",
         write("s.toml", "device = 'gpu'\n" + STUDY)),
    Case("gaussian-study-device-cuda", ["gaussian-study", "g.toml", "--device", "cuda:1", "--out", "out"],
         rf"--device 'cuda:1': ({UNAVAILABLE}|this machine has)", write("g.toml", GAUSSIAN),
         needs=lambda: torch.cuda.device_count() < 2, unmet="needs a machine with fewer than 2 GPUs"),
    Case("train-device-cuda", ["train", *TINY_TRAIN, "--device", "cuda", "--out", "run"],
         rf"device 'cuda': {UNAVAILABLE}", needs=NO_CUDA, unmet=NO_GPU),
    Case("demo-device-cuda", ["demo", "--device", "cuda", "--out", "out"], rf"--device 'cuda': {UNAVAILABLE}",
         needs=NO_CUDA, unmet=NO_GPU),
    Case("demo-quick-device-cuda", ["demo", "--quick", "--device", "cuda", "--out", "out"], UNAVAILABLE,
         needs=NO_CUDA, unmet=NO_GPU),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under folder with a hash of its content ('folder' for folders, 'special' for FIFOs)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        kind = "folder" if path.is_dir() else "file" if path.is_file() else "special"
        content = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else kind
        entries[str(path.relative_to(folder))] = content
    return entries


@dataclass
class Outcome:
    code: int
    stderr: str
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


DRIVER = r"""
import contextlib, io, json, os, sys, traceback
from denoiserlab.cli import main

plan, results_path = sys.argv[1:3]
results = {}
for case in json.load(open(plan)):
    os.chdir(case["folder"])
    sys.argv = ["denoiserlab", *case["args"]]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case["args"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results[case["id"]] = {"code": code, "stderr": err.getvalue()}
with open(results_path, "w") as handle:
    json.dump(results, handle)
"""


def prepare(case: Case, root: Path) -> tuple[Path, dict]:
    folder = root / case.id
    folder.mkdir()
    if case.setup:
        case.setup(folder)
    return folder, snapshot(folder)


def run_own_process(case: Case, folder: Path, environment: dict) -> tuple[int, str]:
    try:
        done = subprocess.run(command() + case.args, cwd=folder, env=environment, capture_output=True, text=True,
                              timeout=PROCESS_SECONDS)
        return done.returncode, done.stderr
    except subprocess.TimeoutExpired as error:
        return -1, f"hung for {PROCESS_SECONDS} s: {error.stderr}"


def run_driver(cases: list[Case], folders: dict[str, Path], root: Path, index: int, environment: dict) -> dict:
    """Run `cases` one after another in one driver process; returns {id: (code, stderr)}."""
    plan, results = root / f"driver-{index}.json", root / f"driver-{index}-results.json"
    plan.write_text(json.dumps([{"id": case.id, "args": case.args, "folder": str(folders[case.id])} for case in cases]))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(plan), str(results)], env=environment,
                          capture_output=True, text=True, timeout=PROCESS_SECONDS * 2)
    if done.returncode != 0 or not results.is_file():
        return {case.id: (-1, f"driver process failed: {done.stderr[-3000:]}") for case in cases}
    return {name: (result["code"], result["stderr"]) for name, result in json.loads(results.read_text()).items()}


def process_environment(root: Path) -> dict:
    return {**os.environ, "DENOISERLAB_CACHE": str(root / "user-cache"), "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("cli")
    environment = process_environment(root)
    runnable = [case for case in CASES if case.needs()]
    (root / "cases").mkdir()
    prepared = {case.id: prepare(case, root / "cases") for case in runnable}
    folders = {name: folder for name, (folder, _) in prepared.items()}
    shared = [case for case in runnable if not case.own_process]
    drivers = 2  # two processes share the cases, so a 2-core machine runs them side by side
    with ThreadPoolExecutor(max_workers=drivers + 1) as pool:
        driven = [pool.submit(run_driver, shared[index::drivers], folders, root, index, environment)
                  for index in range(drivers)]
        own = {case.id: pool.submit(run_own_process, case, folders[case.id], environment)
               for case in runnable if case.own_process}
        results = {name: result for future in driven for name, result in future.result().items()}
        results.update({name: future.result() for name, future in own.items()})
    outcomes = {}
    for name, (code, stderr) in results.items():
        folder, before = prepared[name]
        outcomes[name] = Outcome(code, stderr, before, snapshot(folder))
        for path in folder.rglob("*"):  # let pytest remove what a case left read-only
            if path.is_dir():
                path.chmod(0o755)
    return outcomes


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not progress bars."""
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not PROGRESS.search(line)]


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=[
        *([] if case.needs() else [pytest.mark.skip(reason=case.unmet)])])
    for case in CASES])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, outcomes):
    outcome = outcomes[case.id]
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    lines = message_lines(outcome.stderr)
    assert len(lines) == 1 and lines[0].startswith("denoiserlab: error: "), lines
    assert re.search(case.expect, lines[0]), lines[0]
    assert outcome.code == 2
    assert outcome.after == outcome.before  # nothing written, changed or removed


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_partial_output(tmp_path):
    environment = process_environment(tmp_path)
    # As at a terminal: a suite run as a background job of a shell inherits SIGINT ignored, and so would the CLI.
    process = subprocess.Popen(command() + ["sample", "--subset", "2000", "--n", "256", "--steps", "4000", "--out",
                                            "out"], cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr, started = [], threading.Event()

    def read():
        for chunk in iter(lambda: process.stderr.read(1), ""):
            stderr.append(chunk)
            if "sampling" in "".join(stderr[-80:]):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(PROCESS_SECONDS), "".join(stderr)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    assert process.wait(PROCESS_SECONDS) == 130  # a hang guard, generous for loaded machines
    reader.join(10)
    text = "".join(stderr)
    assert "Traceback" not in text, text[-3000:]
    lines = message_lines(text)
    assert len(lines) == 1 and lines[0].startswith("denoiserlab: error: interrupted"), lines
    assert sorted(os.listdir(tmp_path)) == ["user-cache"] or sorted(os.listdir(tmp_path)) == []
