"""The GPU path's switches, checked here on the CPU (the CUDA side with faked conditions; the
same paths on a real GPU are in test_cuda.py): `amp` off|bf16|fp16 and its one-line errors,
`compile` of the backbone (how often it compiles, how close to eager, no silent fall back),
`deterministic`, the line a GPU-less run of a GPU setting prints, and the rates file behind
the cost model's projections."""
from __future__ import annotations

import json

import pytest
import torch

import lucir
from lucir import device as dev
from lucir import costs, experiments, scheduler, study, trainer
from lucir import results as res
from lucir.config import config_from_dict
from lucir.models import build_model

from conftest import comparable, tiny_config


def _weights(out_dir, phase):
    return torch.load(out_dir / "checkpoints" / f"phase_{phase}.pt", map_location="cpu", weights_only=False)["model"]


# --------------------------------------------------------------------------- amp
def test_amp_values_and_the_old_true_false():
    assert lucir.make_config("lucir").amp == "off"
    assert lucir.make_config("lucir", amp="fp16").amp == "fp16"
    # amp was a switch for bfloat16 before fp16 existed: config.json files and commands that say so
    for old, new in ((True, "bf16"), (False, "off"), ("true", "bf16"), ("False", "off")):
        assert lucir.make_config("lucir", amp=old).amp == new
    assert config_from_dict(lucir.make_config("lucir").to_dict() | {"amp": True}).amp == "bf16"
    with pytest.raises(lucir.ConfigError, match="amp must be one of off, bf16, fp16, got 'fp32'"):
        lucir.make_config("lucir", amp="fp32")


def test_amp_off_keeps_run_names_and_old_run_folders(tmp_path):
    off = tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1, epochs=1)
    assert "amp" not in res.run_identity(off) and "deterministic" not in res.run_identity(off)
    assert res.run_identity(tiny_config("lucir", tmp_path, amp="bf16"))["amp"] == "bf16"
    out = tmp_path / "run"
    lucir.run_incremental(off, out)
    for stored, config in ((False, off), (True, tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1,
                                                            epochs=1, amp="bf16"))):
        written = json.loads((out / "config.json").read_text()) | {"amp": stored}  # as a run before fp16 wrote it
        (out / "config.json").write_text(json.dumps(written))
        assert lucir.run_incremental(config, out)["complete"]  # the same run: loaded, not refused
    with pytest.raises(lucir.ConfigError, match="fields differ: amp"):
        lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1, epochs=1,
                                          amp="fp16", device="cpu"), out)


def test_fp16_on_the_cpu_is_a_one_line_error(tmp_path):
    # float16 autocast on a CPU is emulated: one ResNet-32 step of 8 images took 15 s here (fp32: 0.03 s)
    with pytest.raises(lucir.ConfigError) as e:
        lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", amp="fp16"), tmp_path / "run")
    assert "amp=fp16" in str(e.value) and "use amp=bf16 or amp=off" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_only_on_gpus_with_native_bfloat16(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
    with pytest.raises(lucir.ConfigError, match=r"Tesla V100-SXM2-16GB \(compute capability 7.0\) has no native "
                                                r"bfloat16 .*; use amp=fp16"):
        dev.check_amp("bf16", cuda)
    dev.check_amp("fp16", cuda)
    dev.check_amp("off", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))  # A100
    dev.check_amp("bf16", cuda)
    dev.check_amp("bf16", torch.device("cpu"))  # the CPU's autocast type


def test_gradient_scaler_only_for_fp16():
    assert [dev.grad_scaler(torch.device("cpu"), amp).is_enabled() for amp in ("off", "bf16", "fp16")] == \
        [False, False, True]
    assert dev.autocast(torch.device("cpu"), "off").__class__.__name__ == "nullcontext"
    with dev.autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


# --------------------------------------------------------------------------- compile
# The compile test's bounds: dynamo compiles the backbone's forward at most 2 times per mode (with
# a dynamic batch size, below and from 16 images, where the CPU's convolutions change layout) in 3
# modes (training; the frozen old model; the backbone frozen in the class-balanced finetune): 6
# graphs for a run of any number of phases.
# With the aot_eager backend the arithmetic is eager's; the tolerance leaves room for a backend
# that reorders sums.
MAX_GRAPHS = 6
WEIGHT_TOLERANCE = 1e-4


def _counting_compile(monkeypatch, backend_name: str = "aot_eager") -> list:
    """torch.compile with the aot_eager backend (dynamo and AOT autograd, no C++ code generation)
    or another, that counts the graphs it compiles; everything else as compile=true calls it."""
    graphs = []
    real = torch.compile

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend_name)(gm, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **(kw | {"backend": backend})))
    torch._dynamo.reset()
    return graphs


def test_compile_over_several_phases_compiles_a_bounded_number_of_graphs_and_matches_eager(tmp_path, monkeypatch):
    """Three incremental phases with the class-balanced finetune: the head grows every phase and
    the batch sizes differ (16, then the rest of each phase's images: 8 in phase 1 and 2, 16 in
    phase 3; the finetune 16, then 16 + 8, then 2 x 16), so that every mode has seen both sides of
    16 images by the end of phase 2 and phase 3 must compile nothing."""
    overrides = dict(num_classes=8, phases=3, class_balanced_finetune=True, memory_per_class=4, cache_base=False)
    eager = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", **overrides), tmp_path / "eager")
    graphs = _counting_compile(monkeypatch)
    after = {}  # graphs compiled by the end of each training loop
    compiled = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", compile=True, **overrides),
                                     tmp_path / "compiled",
                                     on_epoch=lambda desc, epoch, epochs: after.__setitem__(desc, len(graphs)))
    assert 2 <= len(graphs) <= MAX_GRAPHS, f"{len(graphs)} graphs compiled"
    assert after["phase 2 CBF"] == len(graphs), after  # the last phase compiled nothing new
    assert [p["acc_cnn"] for p in compiled["phases"]] == [p["acc_cnn"] for p in eager["phases"]]
    assert [p["acc_nme"] for p in compiled["phases"]] == [p["acc_nme"] for p in eager["phases"]]
    for t in range(4):
        a, b = _weights(tmp_path / "compiled", t), _weights(tmp_path / "eager", t)
        assert a.keys() == b.keys()  # the compiled backbone leaves the model's state_dict as it was
        assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= WEIGHT_TOLERANCE, t


def test_compile_never_falls_back_to_eager_silently(monkeypatch):
    _counting_compile(monkeypatch)
    model = build_model("resnet32", 4, True, False)
    x = torch.randn(4, 3, 32, 32)
    real_forward = type(model.backbone).forward

    def with_graph_break(self, x):
        torch._dynamo.graph_break()
        return real_forward(self, x)

    monkeypatch.setattr(type(model.backbone), "forward", with_graph_break)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        trainer.compiled_backbone(model)(x)
    monkeypatch.setattr(type(model.backbone), "forward", real_forward)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):  # another mode needs a second graph
        compiled = trainer.compiled_backbone(model)
        compiled(x)
        compiled(x[:3])  # another batch size: the same graph
        model.eval()
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            compiled(x)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- deterministic
def test_deterministic_changes_no_number_on_the_cpu(reference_run, tmp_path):
    config, ref_out, metrics = reference_run
    out = tmp_path / "deterministic"
    try:
        det = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", deterministic=True, cache_base=False), out)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        dev.set_deterministic(False, torch.device("cpu"))
    assert comparable(det) == comparable(metrics)
    for t in range(3):
        a, b = _weights(out, t), _weights(ref_out, t)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert experiments.run_name(tiny_config("lucir", tmp_path, deterministic=True)) == experiments.run_name(config)


def test_deterministic_sets_cudnn_and_torch_switches(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda", 0)
    try:
        dev.set_deterministic(True, cuda)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        dev.set_deterministic(False, cuda)  # the next run of a worker process: cuDNN's benchmark search
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        dev.set_deterministic(False, torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark


# --------------------------------------------------------------------------- a GPU that CUDA cannot use
def _fake_unusable_gpu(monkeypatch, gpu="Tesla T4, driver 418.67"):
    monkeypatch.setattr(dev, "nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_device_says_when_a_gpu_is_there_but_unusable_before_training(tmp_path, monkeypatch, capsys):
    _fake_unusable_gpu(monkeypatch)
    seen_before_training = []
    real = trainer.train_base

    def train_base(*args, **kwargs):
        seen_before_training.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_base", train_base)
    metrics = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", device="auto", num_classes=4, phases=1,
                                                epochs=1), tmp_path / "auto")
    assert metrics["complete"]
    lines = seen_before_training[0].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: a GPU is present (Tesla T4, driver 418.67) but "
                                                   f"PyTorch {torch.__version__} (")
    assert "trains on the CPU" in lines[0] and "on a CPU against" in lines[0] and "on one GPU" in lines[0]
    # asked for the CPU, or no GPU at all: nothing to say
    lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", device="cpu", num_classes=4, phases=1, epochs=1),
                          tmp_path / "cpu")
    monkeypatch.setattr(dev, "nvidia_gpu", lambda: None)
    lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", device="auto", num_classes=4, phases=1, epochs=1),
                          tmp_path / "none")
    assert capsys.readouterr().err == ""


def test_nvidia_gpu_from_nvidia_smi_or_the_kernel_driver(monkeypatch, tmp_path):
    import subprocess
    monkeypatch.setattr(dev.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="Tesla V100-SXM2-16GB, 418.67\nTesla V100-SXM2-16GB, 418.67\n", stderr=""))
    assert dev.nvidia_gpu() == "Tesla V100-SXM2-16GB, driver 418.67"
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01  Wed Oct 20 2021\n")
    monkeypatch.setattr(dev, "NVIDIA_PROC", proc)
    assert dev.nvidia_gpu() == "NVIDIA driver 470.82.01"
    monkeypatch.setattr(dev, "NVIDIA_PROC", tmp_path / "absent")
    assert dev.nvidia_gpu() is None


def test_gpu_profile_about_to_run_on_the_cpu_says_so_with_its_cost(tmp_path, monkeypatch):
    name, _, content = study.load_profile("paper")
    assert content["meant_for"] == "gpu"
    pairs = study.build_pairs(content, tmp_path, ["main_curves"], {"progress": False})
    line = study.gpu_profile_on_cpu(name, content, pairs, tmp_path, "cpu", "local")
    assert line.startswith("profile 'paper' is meant for a GPU but its 72 runs will train on the CPU: ")
    assert "days on a CPU against" in line and "\n" not in line
    _fake_unusable_gpu(monkeypatch)
    assert "(a GPU is present (Tesla T4, driver 418.67)" in study.gpu_profile_on_cpu(name, content, pairs, tmp_path,
                                                                                     None, "local")
    assert study.gpu_profile_on_cpu(name, content, pairs, tmp_path, "cpu", "ray") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert study.gpu_profile_on_cpu(name, content, pairs, tmp_path, None, "local") is None
    quick = study.load_profile("quick")[2]
    assert study.gpu_profile_on_cpu("quick", quick, pairs, tmp_path, "cpu", "local") is None


# --------------------------------------------------------------------------- the rates file
def test_projections_read_the_committed_rates_file(tmp_path, monkeypatch):
    table = scheduler.rates()
    for kind in ("cpu", "cuda"):
        assert table[kind]["resnet32"] > 0 and table[kind]["resnet18"] > 0 and table[kind]["source"]
    c = lucir.make_config("lucir")
    assert scheduler.projected_seconds(c, "cuda") == pytest.approx(sum(scheduler.run_cost(c)) / table["cuda"]["resnet32"])
    faster = tmp_path / "rates.json"
    faster.write_text(json.dumps(table | {"cuda": table["cuda"] | {"resnet32": 2 * table["cuda"]["resnet32"]}}))
    monkeypatch.setattr(costs, "RATES_FILE", faster)
    assert scheduler.projected_seconds(c, "cuda") == pytest.approx(scheduler.projected_seconds(c, "cuda", table=table) / 2)
