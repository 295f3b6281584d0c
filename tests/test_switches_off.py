"""With every speed switch off (the defaults: amp=off, compile=false, compile_mode=default,
fused_sgd=false), a CPU run computes what it computed before the switches existed, bit for bit:
the metrics and the sha256 of every phase's weights of two tiny runs (LUCIR, and LUCIR with the
class-balanced finetune) equal those that main's code at REFERENCE_COMMIT (before the switches)
gives on the same machine, with the same torch and thread count: that code is taken from the git
history (`git archive`) and run in a subprocess, since another CPU or torch may round differently
(tests/data/switches_off_reference.json holds what it gave on this project's machine, for a
checkout without history). By hand, for any checkout:

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/that/checkout python3 tests/test_switches_off.py --write OUT.json
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import lucir

REFERENCE = Path(__file__).with_name("data") / "switches_off_reference.json"
REFERENCE_COMMIT = "e861870"  # main just before the switches
# conftest's TINY, written out so that the reference can be remade by any checkout's code
TINY = dict(dataset="synthetic", num_classes=6, base_classes=2, phases=2, train_per_class=8, test_per_class=4,
            epochs=2, lr_milestones=(1,), batch_size=16, memory_per_class=2, eval_batch_size=64, cbf_epochs=1,
            cbf_lr_milestones=(), device="cpu", progress=False)
RUNS = {"lucir": {}, "lucir_cbf": {"class_balanced_finetune": True}}
SWITCHES_OFF = dict(amp="off", compile=False, compile_mode="default", fused_sgd=False)


def fingerprint(metrics: dict, out_dir: Path) -> dict:
    """metrics.json without its clock fields, and the sha256 of each phase checkpoint's weights."""
    kept = {k: v for k, v in metrics.items() if k not in ("train_seconds", "wall_seconds_this_call")}
    kept["phases"] = [{k: v for k, v in p.items() if k != "seconds"} for p in metrics["phases"]]
    digests = []
    for t in range(len(metrics["phases"])):
        state = torch.load(Path(out_dir) / "checkpoints" / f"phase_{t}.pt", map_location="cpu", weights_only=False)
        h = hashlib.sha256()
        for name in sorted(state["model"]):
            h.update(name.encode())
            h.update(state["model"][name].contiguous().numpy().tobytes())
        digests.append(h.hexdigest())
    return {"metrics": json.loads(json.dumps(kept)), "weights_sha256": digests}


def run_all(tmp: Path, **switches) -> dict:
    out = {}
    for name, extra in RUNS.items():
        config = lucir.make_config("lucir", **TINY, **extra, **switches, cache_dir=str(tmp / "cache"))
        out[name] = fingerprint(lucir.run_incremental(config, tmp / name), tmp / name)
    return out


def reference_runs(tmp: Path) -> dict:
    """The fingerprints that main's code at REFERENCE_COMMIT gives here, now: that code from the
    git history, run in a subprocess with this process's thread count. Without the history (an
    exported tree) the stored reference of this project's machine stands in."""
    root = Path(lucir.__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", REFERENCE_COMMIT, "lucir"], capture_output=True)
    if archive.returncode != 0:
        return json.loads(REFERENCE.read_text())["runs"]
    code = tmp / "reference_code"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(code, filter="data")
    out = tmp / "reference.json"
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, __file__, "--write", str(out)], env=env, capture_output=True, text=True,
                          cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = json.loads(out.read_text())
    assert Path(made["made_with"]["code"]).resolve() == code.resolve(), "the reference ran the current code"
    return made["runs"]


def test_a_cpu_run_with_every_switch_off_equals_mains_bit_for_bit(tmp_path):
    config = lucir.make_config("lucir", **TINY)
    assert {k: getattr(config, k) for k in SWITCHES_OFF} == SWITCHES_OFF  # the defaults are the switches off
    expected = reference_runs(tmp_path)
    got = run_all(tmp_path, **SWITCHES_OFF)
    for name in RUNS:
        assert got[name]["weights_sha256"] == expected[name]["weights_sha256"], name
        assert got[name]["metrics"] == expected[name]["metrics"], name


def test_fused_sgd_is_the_same_update_bit_for_bit_on_the_cpu(tmp_path):
    """The fused kernel computes SGD's update (momentum, weight decay) as torch's default does: on a
    CPU the weights come out identical to the default's (on a GPU the rounding may differ;
    gpu_check measures its speed)."""
    expected = run_all(tmp_path / "default")
    got = run_all(tmp_path / "fused", fused_sgd=True)
    assert {n: got[n]["weights_sha256"] for n in RUNS} == {n: expected[n]["weights_sha256"] for n in RUNS}


def test_the_switches_name_a_run_only_when_on_and_are_checked(tmp_path, monkeypatch):
    from lucir import results as res
    from lucir import trainer
    off = lucir.make_config("lucir", **TINY)
    assert not {"compile_mode", "fused_sgd"} & set(res.run_identity(off))  # old run folders keep their names
    on = lucir.make_config("lucir", **TINY, fused_sgd=True, compile=True, compile_mode="reduce-overhead")
    assert res.run_identity(on)["fused_sgd"] is True and res.run_identity(on)["compile_mode"] == "reduce-overhead"
    assert trainer.base_cache_path(off, 2) != trainer.base_cache_path(lucir.make_config("lucir", **TINY,
                                                                                        fused_sgd=True), 2)
    with pytest.raises(lucir.ConfigError, match="compile_mode must be one of default, reduce-overhead, max-autotune"):
        lucir.make_config("lucir", compile=True, compile_mode="fast")
    with pytest.raises(lucir.ConfigError, match="compile_mode=reduce-overhead needs compile=true"):
        lucir.make_config("lucir", compile_mode="reduce-overhead")
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or module)
    from lucir.models import build_model
    model = build_model("resnet32", 2, True, False)
    trainer.compiled_backbone(model)
    trainer.compiled_backbone(model, "reduce-overhead")
    assert calls == [{"fullgraph": True}, {"fullgraph": True, "mode": "reduce-overhead"}]


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    import tempfile
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    root = Path(lucir.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(Path(tmp))  # the code's defaults: code older than the switches has none of them
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else REFERENCE
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps({"made_with": {"code": str(root), "commit": commit, "torch": torch.__version__,
                                                "threads": torch.get_num_threads()},
                                  "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
