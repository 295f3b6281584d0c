"""A GPU lease simulated on the CPU at tiny sizes (docs/gpu.md): the real CIFAR-100 packed in parts
that each fit one command beside the work tree, carried part by part into a "remote" folder, a
campaign cut by its deadline in the middle of a run and packed into at most 8 returned files,
brought home, carried back with the run's state for a second lease that finishes it, and a report
rendered at home without training. The continued run ends on the metrics of an uninterrupted one."""
import json
import shutil
import subprocess
import sys
import time

import yaml

import lucir
from lucir import campaign, carry
from lucir.profiles import load_profile

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
    campaign.land(_returned(remote / "OUT"), home_results, home_cache)
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
