"""With every speed switch off (the defaults: amp=off, compile=false, compile_mode=default,
fused_sgd=false), a CPU run computes what it computed before the switches existed, bit for bit:
the metrics and the sha256 of every phase's weights of two tiny runs (LUCIR, and LUCIR with the
class-balanced finetune) equal those that main's code produced at e861870 (tests/data/
switches_off_reference.json). The reference was made with torch 2.14.1 on this project's x86-64
CPU (one thread); another torch or CPU may round differently. To remake it with other code:

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/that/checkout python3 tests/test_switches_off.py --write
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import lucir

REFERENCE = Path(__file__).with_name("data") / "switches_off_reference.json"
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


def test_a_cpu_run_with_every_switch_off_equals_mains_bit_for_bit(tmp_path):
    config = lucir.make_config("lucir", **TINY)
    assert {k: getattr(config, k) for k in SWITCHES_OFF} == SWITCHES_OFF  # the defaults are the switches off
    expected = json.loads(REFERENCE.read_text())["runs"]
    got = run_all(tmp_path, **SWITCHES_OFF)
    for name in RUNS:
        assert got[name]["weights_sha256"] == expected[name]["weights_sha256"], name
        assert got[name]["metrics"] == expected[name]["metrics"], name



def test_fused_sgd_is_the_same_update_bit_for_bit_on_the_cpu(tmp_path):
    """The fused kernel computes SGD's update (momentum, weight decay) as torch's default does: on this
    CPU the weights come out identical (on a GPU the rounding may differ; gpu_check measures its speed)."""
    expected = json.loads(REFERENCE.read_text())["runs"]
    got = run_all(tmp_path, fused_sgd=True)
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


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import subprocess
    import tempfile
    torch.set_num_threads(1)
    root = Path(lucir.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(Path(tmp))  # the code's defaults: code older than the switches has none of them
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"made_with": {"code": str(root), "commit": commit, "torch": torch.__version__},
                                     "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
