"""A GPU lease simulated on the CPU at tiny sizes (docs/gpu.md): the real CIFAR-100 packed in parts
that each fit one command beside the work tree, carried part by part into a "remote" folder, a
campaign cut by its deadline in the middle of a run and packed into at most 8 returned files,
brought home, carried back with the run's state for a second lease that finishes it, and a report
rendered at home without training. The continued run ends on the metrics of an uninterrupted one."""
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

import lucir
from lucir import campaign, carry, costs
from lucir.device import MPSUnavailable, mps_daemon
from lucir.studies import load_profile

from conftest import CIFAR_DIR, DATA_ROOT, comparable, need

REDUCED = dict(num_classes=4, base_classes=2, train_per_class=10, test_per_class=5, memory_per_class=2,
               base_epochs=3, base_lr_milestones=[2], epochs=3, lr_milestones=[2], batch_size=16)


def _profile(tmp_path):
    path = tmp_path / "lease.yaml"
    path.write_text(yaml.safe_dump({
        "description": "a lease simulated at tiny sizes", "shared": REDUCED,
        "notebooks": {"main_curves": [{"setting": "cifar100", "phases": [1], "joint_phases": [], "seeds": [0],
                                       "methods": ["lucir"]}]}}))
    return path


def _carry(parts, remote, store):
    """Each part as one command brings it (the manifest and that part in the work tree's .carry/),
    then `receive` into the store outside the work tree; then `unpack` into `remote`."""
    for entry in json.loads((parts / "manifest.json").read_text())["parts"]:
        tree = remote / "worktree" / ".carry"
        shutil.rmtree(tree.parent, ignore_errors=True)
        tree.mkdir(parents=True)
        shutil.copy(parts / "manifest.json", tree)
        shutil.copy(parts / entry["name"], tree)
        assert carry.main(["receive", str(tree), "--store", str(store)]) == 0
    assert carry.main(["unpack", "--store", str(store), "--to", str(remote)]) == 0


def _returned(out):
    files = sorted(p for p in out.iterdir())
    assert len(files) <= campaign.RETURN_FILES and all(p.stat().st_size <= campaign.RETURN_MIB * carry.MIB
                                                       for p in files)
    return out


def test_a_lease_cut_by_its_deadline_goes_on_in_the_next_and_lands_as_a_report(tmp_path):
    need(CIFAR_DIR)
    profile = _profile(tmp_path)
    home_results, home_cache = tmp_path / "home" / "results", tmp_path / "home" / "cache"

    # here: the data in parts, each beside the work tree under one command's limit
    parts = tmp_path / "parts"
    m = carry.pack(DATA_ROOT, parts)
    assert len(m["parts"]) >= 3
    assert all(m["work_tree_bytes"] + e["bytes"] <= carry.LIMIT_MIB * carry.MIB for e in m["parts"])

    # lease 1: carried, trained until a deadline that falls inside the run, packed
    remote = tmp_path / "lease1"
    _carry(parts, remote, tmp_path / "store1")
    # the deadline falls after the run has started (planning takes well under a second once papermill is
    # imported, done here first) and before its first epoch ends (a worker process loads CIFAR-100: seconds)
    campaign.plan_tasks(str(profile), tmp_path / "warm", {})
    summary = campaign.run(str(profile), remote, remote / "OUT", time.time() + 3.0, device="cpu", jobs=1,
                           data_dir=str(remote / "data"), cache_dir=str(remote / "cache"), command="lease 1",
                           grace=600)
    [run] = summary["runs"]
    assert run["result"] == "stopped" and run["state"].startswith("under way"), run
    assert 0 < summary["image_steps"] and run["left"] > 0
    assert summary["runs_per_gpu"] == 1 and summary["mps"] is False  # no K-process figures for this CPU
    campaign.land(_returned(remote / "OUT"), home_results, home_cache)
    [log] = (home_results / "study" / "campaigns").glob("*.log")  # the lease's own log came home
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # plain lines, no bar's cursor escapes
    assert "campaign lease" in text and "the next lease would finish" in text
    folder = home_results / "runs" / run["run"]
    assert not lucir.results.is_complete(folder)
    assert list(home_cache.glob("base/*.partial.pt")), "the base phase under way came home"

    # lease 2, on a fresh machine: the run's state carried back in parts (the data as in lease 1)
    parts2 = tmp_path / "parts2"
    carry.pack(None, parts2, cache_dir=home_cache, results=home_results)
    remote2 = tmp_path / "lease2"
    _carry(parts2, remote2, tmp_path / "store2")
    shutil.copytree(remote / "data", remote2 / "data")
    summary2 = campaign.run(str(profile), remote2, remote2 / "OUT", time.time() + 600, device="cpu", jobs=1,
                            data_dir=str(remote2 / "data"), cache_dir=str(remote2 / "cache"), command="lease 2")
    assert [r["state"] for r in summary2["runs"]] == ["complete"]
    campaign.land(_returned(remote2 / "OUT"), home_results, home_cache)

    # the continued run ends where an uninterrupted one does
    _, _, content = load_profile(str(profile))
    config = lucir.make_config("lucir", **REDUCED, phases=1, data_dir=str(DATA_ROOT), cache_dir=str(tmp_path / "c"),
                               progress=False)
    reference = lucir.run_incremental(config, tmp_path / "uninterrupted")
    landed = json.loads((folder / "metrics.json").read_text())
    assert {**comparable(landed), "data_source": None} == {**comparable(reference), "data_source": None}
    assert landed["data_source"].startswith("array format at ")  # the copy on the "GPU machine"

    # home: the report from the landed runs, trained nowhere here, naming where they were trained
    reports = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "lucir.study", "--profile", str(profile), "--results",
                           str(home_results), "--reports", str(reports), "--cache-dir", str(home_cache),
                           "--no-progress"], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "LUCIR_DATA": str(DATA_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 runs to train" in proc.stderr or "1 complete earlier" in proc.stderr, proc.stderr[-2000:]
    html = (reports / "report.html").read_text()
    assert "Runs trained elsewhere" in html and "lease 2" in html and run["run"] in html


MEASURED = {"cpu": {"resnet32": 330, "resnet18": 14, "source": "cpu"},
            "cuda": {"resnet32": 20000, "resnet18": 6000, "source": "measured on a GPU",
                     "resnet32_processes_sharing_one_device": {"1": 18000, "2": 30000, "4": 33000},
                     "resnet32_processes_sharing_one_device_mps": {"4": 45000}}}


def test_runs_share_the_gpu_the_way_gpu_check_measured_fastest():
    best = costs.sharing("cuda", "resnet32", MEASURED)
    assert (best["runs"], best["mps"]) == (4, True) and best["rate"] == 20000 * 45000 / 18000
    no_mps = {**MEASURED, "cuda": {k: v for k, v in MEASURED["cuda"].items() if not k.endswith("_mps")}}
    best = costs.sharing("cuda", "resnet32", no_mps)
    assert (best["runs"], best["mps"]) == (4, False) and "4 run(s) at once" in best["source"]
    alone = costs.sharing("cuda", "resnet32", {"cuda": {"resnet32": 5000, "source": "assumed, not measured"}})
    assert (alone["runs"], alone["mps"], alone["rate"]) == (1, False, 5000.0)
    assert alone["source"].startswith("assumed, not measured")


def test_the_dry_run_says_what_one_lease_finishes_and_how_many_leases_the_seeds_take(tmp_path, monkeypatch):
    """The paper's cells on one GPU, planned here on the CPU from lucir/rates.json: the committed
    (assumed) rate says so; measured K-process figures raise the rate and cut the leases."""
    assumed = campaign.plan("paper_cifar_gpu", tmp_path / "a", 7, None)
    assert "18 runs to train" in assumed[0] and "assumed, not measured" in assumed[0]
    leases = [int(line.split(", ")[1].split()[0]) for line in assumed if line.startswith("seeds up to")]
    assert len(leases) == 3 and leases == sorted(leases) and leases[0] >= 1
    assert any(line.startswith("one lease finishes") for line in assumed)
    table = tmp_path / "rates.json"
    table.write_text(json.dumps(MEASURED))
    monkeypatch.setattr(costs, "RATES_FILE", table)
    measured = campaign.plan("paper_cifar_gpu", tmp_path / "b", 7, None)
    assert "measured on a GPU; 4 run(s) at once under MPS" in measured[0]
    fewer = [int(line.split(", ")[1].split()[0]) for line in measured if line.startswith("seeds up to")]
    assert all(f < a for f, a in zip(fewer, leases))
    [finishes] = [line for line in measured if line.startswith("one lease finishes")]
    assert "LUCIR" in finishes or "iCaRL" in finishes  # 7 min at 50,000/s: at least one run ends in lease 1


def _fake_control(tmp_path, code=0):
    """A stand-in for nvidia-cuda-mps-control that writes down how it was called."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "nvidia-cuda-mps-control"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {tmp_path}/calls; echo refused >&2; exit {code}; fi
read what; echo "$what $CUDA_MPS_PIPE_DIRECTORY" >> {tmp_path}/calls
""")
    script.chmod(0o755)
    return bindir


def test_mps_is_a_daemon_of_our_own_quit_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_control(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    with mps_daemon(tmp_path / "mps") as env:
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "mps" / "pipe")
        assert (tmp_path / "calls").read_text() == f"start {tmp_path}/mps/pipe\n"
    assert (tmp_path / "calls").read_text().splitlines()[1] == f"quit {tmp_path}/mps/pipe"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ  # nothing set in this process


def test_mps_that_cannot_start_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_control(tmp_path, code=1)))
    try:
        with mps_daemon(tmp_path / "mps"):
            raise AssertionError("the block must not run")
    except MPSUnavailable as e:
        assert "exited 1: refused" in str(e)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    try:
        with mps_daemon(tmp_path / "mps"):
            raise AssertionError("the block must not run")
    except MPSUnavailable as e:
        assert "not on PATH" in str(e)
