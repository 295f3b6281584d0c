"""Faults a run can meet (issue 32), each injected for real: a kill between the phase checkpoint
and metrics.json (and between the Ray driver's writes), a deleted final checkpoint, a full disk (a
small tmpfs), a read-only folder (a tmpfs mounted read-only), a second writer of the same --out,
milestones outside the epochs, CIFAR pickles that would run code or are garbage, a Ray address
with nothing listening or a silent server, truncated cache and config files, a corrupt JPEG, a
missing data folder. Each ends in one line on stderr naming the file or address and a non-zero
exit, and once the fault is removed the same command ends with the metrics (and weights) of a run
never interrupted (for the Ray address: once a Ray head is started there, and with its token; for
the milestones: once they lie inside the epochs).

The mounts need root (as on the CI machine); without it those tests are skipped."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, comparable, file_hashes
from lucir import results as res
from lucir import run_incremental
from test_resume import _config, _env, _weights, command
from smoke_study import REPO

VALUES = dict(TINY, cache_base=False, checkpoint_every=0)  # three phases, every file in the run folder
LAST = 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of VALUES: (folder, metrics)."""
    out = tmp_path_factory.mktemp("faults_reference") / "run"
    return out, run_incremental(_config("lucir", VALUES, out.parent / "cache"), out)


def lucir_run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lucir", *args], env=_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def args_for(out: Path) -> list[str]:
    return command("lucir", dict(VALUES, cache_dir=out.parent / "cache"), out)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def assert_uninterrupted(out: Path, reference) -> None:
    ref_out, ref_metrics = reference
    metrics = res.load_metrics(out)
    assert metrics["complete"] and comparable(metrics) == comparable(ref_metrics)
    ref_w, w = _weights(ref_out, LAST), _weights(out, LAST)
    assert ref_w.keys() == w.keys() and all(torch.equal(ref_w[k], w[k]) for k in w)


# --------------------------------------------------------------------------- item 1: "complete" last
KILLED_AFTER_CHECKPOINT = r"""
import os, signal, sys
from lucir import cli
from lucir import results as res
save = res.save_checkpoint
def save_then_die(out_dir, phase, state):
    save(out_dir, phase, state)
    if phase == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
res.save_checkpoint = save_then_die
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("phase", [1, LAST])
def test_a_kill_between_the_phase_checkpoint_and_metrics_resumes_to_the_uninterrupted_run(tmp_path, reference, phase):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_CHECKPOINT, str(phase), *args_for(out)],
                            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert res.checkpoint_path(out, phase).exists() and not res.is_complete(out)
    assert len(res.load_metrics(out)["phases"]) == phase  # metrics.json of the phase before
    again = lucir_run(args_for(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert_uninterrupted(out, reference)


def test_a_complete_run_without_its_final_checkpoint_is_refused_in_one_line(tmp_path, reference):
    out = tmp_path / "run"
    first = lucir_run(args_for(out))
    assert first.returncode == 0, first.stderr[-2000:]
    final = res.checkpoint_path(out, LAST)
    final.unlink()
    assert not res.is_complete(out)  # the study counts it as not done either
    refused = lucir_run(args_for(out))
    assert refused.returncode == 2 and "average incremental accuracy" not in refused.stdout
    line = one_line(refused.stderr)
    assert str(final) in line and "delete metrics.json" in line
    (out / "metrics.json").unlink()  # what the line says to do
    again = lucir_run(args_for(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert_uninterrupted(out, reference)


def test_the_report_does_not_call_a_run_without_its_final_checkpoint_complete(tmp_path, reference):
    import shutil
    import pandas as pd
    from lucir import experiments as ex
    from lucir import report
    results = tmp_path / "results"
    run = results / "runs" / "r"
    shutil.copytree(reference[0], run)
    row = {c: 0 for c in ex.TABLE_COLUMNS} | {"experiment": "main_curves", "setting": "s", "method": "lucir",
                                             "variant": "cnn", "metric": "acc", "run_dir": str(run)}
    ex.write_table(pd.DataFrame([row], columns=ex.TABLE_COLUMNS), results, "main_curves", "s", {})
    assert report.runs_table(results)["complete"].tolist() == [True]
    res.checkpoint_path(run, LAST).unlink()  # metrics.json still says complete
    assert report.runs_table(results)["complete"].tolist() == [False]


# --------------------------------------------------------------------------- full disk, read-only folder
@pytest.fixture
def mount_point(tmp_path):
    """A folder to mount a tmpfs on; unmounted at the end. Skips where mounting is not permitted."""
    point = tmp_path / "mnt"
    point.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (needs root)")
    subprocess.run(["umount", str(point)], check=True)
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


@pytest.mark.parametrize("phase", [1, LAST])
def test_a_full_disk_is_one_line_naming_the_file_and_the_same_command_goes_on(tmp_path, reference, mount_point, phase):
    # room for the checkpoints before `phase` (and the small files) but not for that phase's: at
    # LAST, the final checkpoint, which a metrics.json saying "complete" once outlived
    size = int(res.checkpoint_path(reference[0], 0).stat().st_size * (phase + 0.5))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], check=True)
    out = mount_point / "run"
    args = command("lucir", dict(VALUES, cache_dir=tmp_path / "cache"), out)
    full = lucir_run(args)
    assert full.returncode == 1, full.stderr[-2000:]
    line = one_line(full.stderr)
    assert "No space left on device" in line and str(res.checkpoint_path(out, phase)) in line
    assert res.checkpoint_path(out, phase - 1).exists() and not res.checkpoint_path(out, phase).exists()
    metrics = res.load_metrics(out)
    assert len(metrics["phases"]) == phase and not metrics["complete"] and not res.is_complete(out)
    assert not list(out.rglob("*.tmp")), "a failed write leaves no temporary file"
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)  # space freed
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_uninterrupted(out, reference)


def test_a_read_only_out_folder_is_one_line_naming_it_and_the_same_command_runs_once_writable(
        tmp_path, reference, mount_point):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64m", "tmpfs", str(mount_point)], check=True)
    out = mount_point / "run"
    args = command("lucir", dict(VALUES, cache_dir=tmp_path / "cache"), out)
    refused = lucir_run(args)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = one_line(refused.stderr)
    assert "Read-only file system" in line and str(mount_point) in line
    subprocess.run(["mount", "-o", "remount,rw", str(mount_point)], check=True)
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_uninterrupted(out, reference)


# --------------------------------------------------------------------------- item 5: two writers
def test_a_second_writer_of_one_out_folder_is_told_who_holds_it_and_writes_nothing(tmp_path, reference):
    out = tmp_path / "run"
    args = args_for(out)
    first = subprocess.Popen([sys.executable, "-m", "lucir", *args], env=_env(), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "config.json").exists():  # the first holds the lock and has begun writing
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)  # keeps it holding the lock, its files unchanged
        before = file_hashes(tmp_path)
        second = lucir_run(args)
        assert file_hashes(tmp_path) == before, "the second writer wrote files"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert f"pid {first.pid} on host {socket.gethostname()}" in line and str(out) in line
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert_uninterrupted(out, reference)
    again = lucir_run(args)  # the holder has ended: the same command loads the run
    assert again.returncode == 0 and "average incremental accuracy" in again.stdout, again.stderr[-2000:]


# --------------------------------------------------------------------------- item 6: milestones
@pytest.mark.parametrize("sets, named", [
    (["epochs=10", "lr_milestones=200"], "lr_milestones = 200 has 200 outside the epochs = 10"),
    (["epochs=4", "lr_milestones=2,3", "base_epochs=3", "base_lr_milestones=2,5"], "base_lr_milestones = 2,5 has 5"),
    (["epochs=4", "lr_milestones=2,3", "base_epochs=2"], "lr_milestones = 2,3 has 3 outside the base_epochs = 2"),
    (["epochs=2", "lr_milestones=1", "class_balanced_finetune=true", "cbf_epochs=3", "cbf_lr_milestones=0"],
     "cbf_lr_milestones = 0 has 0 outside the cbf_epochs = 3"),
])
def test_milestones_outside_the_epochs_of_their_stage_are_refused_in_one_line(tmp_path, sets, named):
    args = ["run", "--preset", "lucir", "--set", "dataset=synthetic", "--set", f"cache_dir={tmp_path / 'cache'}",
            *[x for s in sets for x in ("--set", s)], "--out", str(tmp_path / "run")]
    refused = lucir_run(args, timeout=240)
    assert refused.returncode == 2 and named in one_line(refused.stderr)
    assert not (tmp_path / "run").exists()



def test_a_run_refused_for_its_milestones_ends_as_one_never_refused_once_they_lie_inside(tmp_path, reference):
    """The fault removed: the same command with the milestone inside the epochs trains the run that
    an uninterrupted command trains, nothing left behind by the refusal."""
    out = tmp_path / "run"
    refused = lucir_run([*args_for(out), "--set", "lr_milestones=200"], timeout=240)
    assert refused.returncode == 2 and "lr_milestones = 200 has 200 outside the epochs = 2" in one_line(refused.stderr)
    assert not out.exists()
    fixed = lucir_run(args_for(out))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert_uninterrupted(out, reference)

# --------------------------------------------------------------------------- item 3: a data folder runs nothing
class _CreatesAFile:
    """Unpickled by a general unpickler, this opens (creates) the file `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


CIFAR_VALUES = dict(TINY, dataset="cifar100", num_classes=4, base_classes=2, phases=1, train_per_class=5,
                    test_per_class=3, cache_base=False, checkpoint_every=0)


@pytest.mark.parametrize("fault", ["code", "garbage"])
def test_a_cifar_pickle_that_would_run_code_or_is_garbage_is_refused_and_runs_nothing(tmp_path, torchvision_cifar100,
                                                                                      fault):
    import pickle
    _, good = torchvision_cifar100
    data = tmp_path / "data"
    (data / "cifar-100-python").mkdir(parents=True)
    for name in ("test", "meta"):
        (data / "cifar-100-python" / name).symlink_to(good / "cifar-100-python" / name)
    train = data / "cifar-100-python" / "train"
    marker = tmp_path / "created_by_the_pickle"
    if fault == "code":
        payload = pickle.dumps({"data": _CreatesAFile(marker), "fine_labels": []}, protocol=2)
        probe = tmp_path / "probe"
        pickle.loads(pickle.dumps(_CreatesAFile(probe), protocol=2))  # noqa: S301  the fault is real: a general
        assert probe.exists()  # unpickler creates the file
    else:
        payload = bytes(range(256)) * 40
    train.write_bytes(payload)
    out = tmp_path / "run"
    args = command("lucir", dict(CIFAR_VALUES, cache_dir=tmp_path / "cache", data_dir=data), out)
    refused = lucir_run(args)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = one_line(refused.stderr)
    assert f"'{train}'" in line  # the file itself, not only its folder
    assert not marker.exists(), "the pickle ran"
    assert not res.checkpoint_path(out, 0).exists()
    # the fault removed: the genuine file in its place, and the same command runs to the end
    train.unlink()
    train.symlink_to(good / "cifar-100-python" / "train")
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    reference = run_incremental(_config("lucir", dict(CIFAR_VALUES, data_dir=str(good)), tmp_path / "c2"),
                                tmp_path / "reference")
    ours = res.load_metrics(out)
    assert ours["complete"] and comparable(ours)["phases"] == comparable(reference)["phases"]


# --------------------------------------------------------------------------- item 2: an unreachable Ray address
def listening_port(greeting: bytes):
    """A server that accepts every connection, sends `greeting` and says nothing more; its port."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                conn = server.accept()[0]
                held.append(conn)
                conn.sendall(greeting)
            except OSError:  # the server closed at the end of the test
                return
    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture
def silent_port():
    """The port of a server that never says a word (a hung service, or a port of something other
    than Ray): ray.init waits there for ever."""
    yield from listening_port(b"")


@pytest.fixture
def grpc_port():
    """The port of a server that opens as every gRPC server does (an HTTP/2 SETTINGS frame), so the
    probe takes it, and then says nothing: ray.init waits there for ever too."""
    yield from listening_port(bytes.fromhex("000000040000000000"))


def free_port() -> int:
    """A port that was free a moment ago: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault, reason", [("nothing listening", "Connection refused"),
                                           ("a silent server", "it accepted the connection but said nothing"),
                                           ("a gRPC server, not Ray", "no Ray driver could join it")])
def test_a_ray_address_where_no_cluster_answers_fails_in_one_line_within_the_stated_time(tmp_path, request, fault,
                                                                                          reason):
    pytest.importorskip("ray")
    from lucir.ray_executor import RAY_CONNECT_TIMEOUT_S, RAY_JOIN_TIMEOUT_S
    from smoke_study import run_study
    port = free_port() if fault == "nothing listening" else request.getfixturevalue(
        "silent_port" if fault == "a silent server" else "grpc_port")
    address = f"127.0.0.1:{port}"
    started = time.time()
    proc = run_study("--profile", "smoke", "--executor", "ray", "--address", address, "--results",
                     str(tmp_path / "results"), "--reports", str(tmp_path / "reports"), "--cache-dir",
                     str(tmp_path / "cache"), timeout=RAY_CONNECT_TIMEOUT_S + RAY_JOIN_TIMEOUT_S + 120)
    stated = RAY_JOIN_TIMEOUT_S if fault == "a gRPC server, not Ray" else RAY_CONNECT_TIMEOUT_S
    assert time.time() - started < stated + 60  # ray.init alone would wait for ever
    error = one_error_line(proc)  # after the study's header line
    assert address in error and "no Ray cluster answers" in error and reason in error
    assert not list((tmp_path / "results").rglob("metrics.json"))


def test_the_address_probe_takes_a_grpc_server_and_refuses_another_protocol_at_once():
    """What Ray's GCS sent here to the probe (an HTTP/2 SETTINGS frame's header) passes; an HTTP/1
    answer is refused without waiting for the timeout."""
    from lucir.ray_executor import check_reachable
    from lucir.scheduler import ExecutorError
    for answer, passes in ((bytes.fromhex("000018040000000000"), True), (b"HTTP/1.1 400 Bad Request\r\n\r\n", False)):
        with socket.create_server(("127.0.0.1", 0)) as server:
            reply = threading.Thread(target=lambda s=server, a=answer: s.accept()[0].sendall(a), daemon=True)
            reply.start()
            started = time.time()
            try:
                check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=30)
                passed = True
            except ExecutorError as e:
                passed = False
                assert "not as a Ray cluster does" in str(e)
            assert passed == passes and time.time() - started < 10
            reply.join()



def one_error_line(proc) -> str:
    """The error line of a failed study: stderr less the study's header line, which must be one line."""
    errors = [x for x in proc.stderr.strip().splitlines() if not x.startswith("study 'smoke': ")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def head_takes_a_driver(address: str, token: dict) -> bool:
    """A driver with the head's token joins at `address` and leaves, as the study's own check does
    before it joins (within RAY_JOIN_TIMEOUT_S)."""
    from lucir.ray_executor import check_reachable, try_join
    from lucir.scheduler import ExecutorError
    with pytest.MonkeyPatch.context() as env:  # the token for this driver only: the study runs without it first
        for name, value in token.items():
            env.setenv(name, value)
        try:
            check_reachable(address, timeout=5)
            try_join(address)
            return True
        except ExecutorError:
            return False


def test_a_ray_address_with_nothing_listening_works_once_a_ray_head_is_started_there(tmp_path):
    """The fault removed for real: `ray start --head` at the address that refused the connection,
    with token authentication (Ray's default where a token exists). The driver without the token
    is refused in one line saying what to set; with it, the same command ends with the metrics of
    the same study run locally."""
    pytest.importorskip("ray")
    from smoke_study import run_study
    port = free_port()
    address = f"127.0.0.1:{port}"
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the user's shell for this head
    folders = lambda where: ("--results", str(tmp_path / where / "results"), "--reports",  # noqa: E731
                             str(tmp_path / where / "reports"), "--cache-dir", str(tmp_path / where / "cache"))
    args = ("--profile", "smoke", "--only", "weight_norms", "--executor", "ray", "--address", address, *folders("ray"))

    assert address in one_error_line(run_study(*args, env=token, timeout=300))
    session = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
                             "--block", f"--temp-dir={session}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            env=dict(os.environ, **token), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300  # the head takes drivers once its raylet is up, after its port answers
        while not head_takes_a_driver(address, token):
            if time.time() > deadline or head.poll() is not None:
                pytest.skip(f"`ray start --head --port={port}` took no driver within 5 min here")
            time.sleep(2)
        refused = one_error_line(run_study(*args, timeout=300))
        assert address in refused and "RAY_AUTH_MODE=token" in refused
        joined = run_study(*args, env=token, timeout=1200)
        assert joined.returncode == 0, joined.stderr[-3000:]
    finally:
        head.terminate()
        try:
            head.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(session, ignore_errors=True)
    local = run_study(*args[:4], *folders("local"), timeout=1200)
    assert local.returncode == 0, local.stderr[-3000:]
    runs = {where: sorted((tmp_path / where / "results" / "runs").glob("*/metrics.json")) for where in ("ray", "local")}
    assert runs["ray"] and [m.parent.name for m in runs["ray"]] == [m.parent.name for m in runs["local"]]
    for ours, theirs in zip(runs["ray"], runs["local"]):
        assert comparable(res.load_metrics(ours.parent)) == comparable(res.load_metrics(theirs.parent)), ours.parent.name


# --------------------------------------------------------------------------- item 4: truncated files
def test_a_truncated_base_cache_file_is_one_line_naming_it_and_deleting_it_retrains_the_same_base(tmp_path):
    values = dict(VALUES, cache_base=True, cache_dir=tmp_path / "cache")
    first = lucir_run(command("lucir", values, tmp_path / "first"))
    assert first.returncode == 0, first.stderr[-2000:]
    (cache,) = (tmp_path / "cache").rglob("base/*.pt")
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    args = command("lucir", values, tmp_path / "second")  # another run sharing that base phase
    refused = lucir_run(args)
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert str(cache) in line and "delete it" in line and "PytorchStreamReader" in line
    cache.unlink()
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert comparable(res.load_metrics(tmp_path / "second")) == comparable(res.load_metrics(tmp_path / "first"))


def test_a_long_error_is_shortened_at_a_sentence_or_word_end_never_mid_sentence():
    sentence = "Weights only load failed because the file holds an object of an unexpected kind. "
    long = sentence * 4 + "\nCheck the recommended steps in the following error message:\n..."
    assert res.first_sentence(RuntimeError(long)) == (sentence * 2).strip()  # whole sentences up to 200 characters
    words = "word " * 60
    assert res.first_sentence(RuntimeError(words)) == "word " * 39 + "word ..."  # at a word end, marked
    assert res.first_sentence(RuntimeError("short reason.\nmore")) == "short reason."


def test_a_truncated_config_json_is_one_line_naming_it_and_deleting_it_is_safe(tmp_path, reference):
    out = tmp_path / "run"
    first = lucir_run(args_for(out))
    assert first.returncode == 0, first.stderr[-2000:]
    config = out / "config.json"
    config.write_text(config.read_text()[:40])
    refused = lucir_run(args_for(out))
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert str(config) in line and "JSONDecodeError" in line and "delete it" in line
    config.unlink()
    again = lucir_run(args_for(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert_uninterrupted(out, reference)


TINY_IMAGENET_VALUES = dict(TINY, dataset="tiny_imagenet", image_size=32, num_classes=4, base_classes=2, phases=1,
                           train_per_class=5, test_per_class=3, epochs=1, lr_milestones=(1,), memory_per_class=2,
                           batch_size=10, cache_base=False, checkpoint_every=0, workers=1)  # decoded in a worker


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """(the good Tiny-ImageNet folder, the metrics of an uninterrupted run of TINY_IMAGENET_VALUES on it)."""
    from conftest import TINY_IMAGENET_DIR, need
    good = need(TINY_IMAGENET_DIR)
    tmp = tmp_path_factory.mktemp("tiny_imagenet_reference")
    config = _config("lucir", dict(TINY_IMAGENET_VALUES, data_dir=str(good)), tmp / "cache")
    return good, run_incremental(config, tmp / "run")


def test_a_corrupt_jpeg_is_one_line_naming_its_file_and_index_and_the_good_file_runs_to_the_end(tmp_path,
                                                                                              tiny_imagenet):
    import numpy as np
    from lucir.data import load_dataset
    good, reference = tiny_imagenet
    bad = tmp_path / "data"
    bad.mkdir()
    for f in good.iterdir():
        (bad / f.name).symlink_to(f)
    name = "train_50per_class_jpeg.npz"
    first = load_dataset(_config("lucir", dict(TINY_IMAGENET_VALUES, data_dir=str(good)), tmp_path / "c")
                         ).train.origin[1][0]
    z = dict(np.load(good / name))
    start, end = z["offsets"][first], z["offsets"][first + 1]
    z["jpeg_bytes"] = z["jpeg_bytes"].copy()
    z["jpeg_bytes"][start:end] = 0  # the image's bytes garbled, every other image as it was
    (bad / name).unlink()
    with open(bad / name, "wb") as fh:
        np.savez(fh, **z)
    out = tmp_path / "run"
    args = command("lucir", dict(TINY_IMAGENET_VALUES, data_dir=bad, cache_dir=tmp_path / "cache"), out)
    refused = lucir_run(args)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = one_line(refused.stderr)
    assert f"image {first} of the training images" in line and str(bad) in line
    assert "UnidentifiedImageError" in line
    (bad / name).unlink()
    (bad / name).symlink_to(good / name)  # the good file back
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert comparable(res.load_metrics(out))["phases"] == comparable(reference)["phases"]


# --------------------------------------------------------------------------- item 7: messages that say what is true
def test_the_data_error_says_how_each_command_takes_data_dir(tmp_path, tiny_imagenet):
    """The same DataError reaches `python -m lucir run` and the study, which rejects --set: the line
    names both ways (it said only --set data_dir=..., which lucir.study refuses). Once the folder
    is there, the same command runs to the end."""
    good, reference = tiny_imagenet
    missing = tmp_path / "none"
    out = tmp_path / "run"
    args = command("lucir", dict(TINY_IMAGENET_VALUES, data_dir=missing, cache_dir=tmp_path / "cache"), out)
    proc = lucir_run(args, timeout=240)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert str(missing) in line and "--set data_dir=/path with python -m lucir run" in line
    assert "data_dir under shared: in a study profile" in line
    missing.symlink_to(good, target_is_directory=True)  # the data where the command looks
    again = lucir_run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert comparable(res.load_metrics(out))["phases"] == comparable(reference)["phases"]


def test_a_failed_notebook_whose_old_table_exists_is_not_reported_as_having_no_table(tmp_path, monkeypatch):
    """The report's section of a notebook whose run failed in this study, while results/tables/
    holds a table from an earlier study: the failure, and no claim that there is no table."""
    import json
    import pandas as pd
    from lucir import experiments as ex
    from lucir import report
    results = tmp_path / "results"
    row = {c: 0 for c in ex.TABLE_COLUMNS} | {"experiment": "weight_norms", "setting": "s", "metric": "acc",
                                             "run_dir": str(results / "runs" / "r")}
    ex.write_table(pd.DataFrame([row], columns=ex.TABLE_COLUMNS), results, "weight_norms", "s", {"phases": [1]})
    assert list((results / "tables" / "weight_norms").glob("*.csv"))  # the table exists
    (results / "study").mkdir(parents=True)
    (results / "study" / "study.json").write_text(json.dumps({"pairs": [
        {"notebook": "weight_norms", "setting": "s", "status": "failed", "error": "DataError: x", "executed": ""}]}))
    shown = []
    monkeypatch.setattr(report, "box", lambda text, kind="claim": shown.append(text))
    assert report._status(results, "weight_norms") is None
    assert any("Failed" in t for t in shown) and not any("no table" in t for t in shown), shown


def test_a_kernel_logging_keyboard_interrupt_at_shutdown_prints_nothing_under_the_study(tmp_path, capfd):
    """jupyter_client interrupts each kernel before shutting it down; a kernel inside a message
    handler then logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." on the stderr the
    study shares with it, after a notebook that succeeded. That race is rare on a given machine, so
    the kernel logs that line through the same logger itself: without the study's kernel options
    it reaches stderr, with them (lucir.notebook_runner.QUIET_KERNEL) it does not."""
    import nbformat
    import papermill as pm
    from lucir.notebook_runner import QUIET_KERNEL
    notebook = tmp_path / "logs.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("get_ipython().kernel.log.error('KeyboardInterrupt caught in kernel.')")]
    nbformat.write(nb, notebook)
    line = "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel."
    for options, shown in (({}, True), (QUIET_KERNEL, False)):
        pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                            cwd=str(tmp_path), **options)
        assert (line in capfd.readouterr().err) == shown, options


# --------------------------------------------------------------------------- the Ray driver's order of writes
KILLED_AT_A_DRIVER_WRITE = r"""
import os, signal, sys
from pathlib import Path
from lucir import results as res
from lucir.ray_executor import RunFiles, write_run_files
folder, last = Path(sys.argv[1]), int(sys.argv[2])
store = RunFiles()  # what a task sent over two syncs before the driver took it
store.put("r", {"checkpoints/epoch.pt": b"epoch 2 of phase 1"})
store.put("r", {"checkpoints/phase_1.pt": b"phase 1", "metrics.json": b"{}", "checkpoints/epoch.pt": None})
done = []
def then_die(step):
    def wrapped(*args, **kwargs):
        step(*args, **kwargs)
        done.append(1)
        if len(done) == last:
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped
res.atomic_write, Path.unlink = then_die(res.atomic_write), then_die(Path.unlink)
write_run_files(folder, store.take()["r"])
"""


@pytest.mark.parametrize("last", [1, 2, 3])
def test_the_ray_driver_removes_the_epoch_checkpoint_only_after_the_phase_checkpoint_is_written(tmp_path, last):
    """A SIGKILL of the driver after each of its writes of a task's files: the run folder always
    holds the epoch checkpoint or the phase checkpoint that replaces it, never neither (the
    removal, gathered in an earlier sync, came first)."""
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "phase_0.pt").write_bytes(b"phase 0")
    (folder / "checkpoints" / "epoch.pt").write_bytes(b"epoch 1 of phase 1")  # from an earlier sync
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_A_DRIVER_WRITE, str(folder), str(last)], env=_env(),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    names = {p.name for p in folder.rglob("*") if p.is_file()}
    assert names == [{"phase_0.pt", "epoch.pt", "phase_1.pt"}, {"phase_0.pt", "epoch.pt", "phase_1.pt", "metrics.json"},
                     {"phase_0.pt", "phase_1.pt", "metrics.json"}][last - 1]
