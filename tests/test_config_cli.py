"""The config dataclass (paper defaults, parsing, validation, presets) and the command line:
bad input gives one clear line on stderr and a non-zero exit, never a traceback."""
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import lucir
from lucir import cli
from lucir.config import PRESETS, Config, ConfigError, config_from_dict, field_help, make_config

from conftest import TINY_IMAGENET_DIR, need


# --------------------------------------------------------------------------- config
def test_defaults_are_the_paper_settings():
    c = make_config()
    assert (c.dataset, c.base_classes, c.class_order_seed) == ("cifar100", 50, 1993)
    assert (c.lambda_base, c.K, c.margin, c.temperature) == (5.0, 2, 0.5, 2.0)        # Sec. 4.1
    assert (c.memory_per_class, c.memory_total) == (20, None)                         # R_per = 20
    assert (c.epochs, c.lr, c.lr_milestones, c.lr_gamma) == (160, 0.1, (80, 120), 0.1)
    assert (c.batch_size, c.momentum, c.weight_decay) == (128, 0.9, 5e-4)
    assert (c.eta_init, c.lambda_direction) == (1.0, "code")
    assert c.nme_flip == "channels"  # the official CIFAR-100 code's RGB->BGR copy, which gave the NME numbers
    assert c.cosine_normalization and c.less_forget and c.inter_class_separation and c.adaptive_weight
    assert not c.class_balanced_finetune and not c.joint_training
    assert c.resolved_model == "resnet32" and c.resolved_last_relu is False  # ReLU removed with CN


def test_every_field_has_a_help_line():
    names = [f.name for f in fields(Config)]
    helps = {name: meaning for name, _, meaning in field_help()}
    assert list(helps) == names
    assert all(meaning.strip() for meaning in helps.values())


def test_string_values_are_parsed_to_field_types():
    c = make_config("lucir", epochs="3", lr="0.05", cosine_normalization="false", less_forget="no",
                    inter_class_separation="off", lr_milestones="2,3", memory_total="none", num_classes="20",
                    base_classes="10", phases="2")
    assert c.epochs == 3 and c.lr == 0.05 and c.cosine_normalization is False and c.less_forget is False
    assert c.lr_milestones == (2, 3) and c.memory_total is None and c.num_classes == 20
    assert make_config("lucir", lr_milestones="").lr_milestones == ()
    assert make_config("lucir", lr=1).lr == 1.0 and isinstance(make_config("lucir", lr=1).lr, float)
    assert make_config("lucir", lr_milestones=[3, 4]).lr_milestones == (3, 4)


@pytest.mark.parametrize("overrides, words", [
    (dict(lamda_base=3), ["lamda_base", "did you mean 'lambda_base'"]),
    (dict(epochs="abc"), ["epochs", "int"]),
    (dict(epochs=1.5), ["epochs", "int"]),
    (dict(cosine_normalization=1), ["cosine_normalization", "true or false"]),
    (dict(cosine_normalization="maybe"), ["cosine_normalization", "true or false"]),
    (dict(lr_milestones="a,b"), ["lr_milestones", "integers"]),
    (dict(epochs=None), ["epochs", "None"]),
    (dict(epochs=0), ["epochs", "at least 1"]),
    (dict(lr=0), ["lr", "positive"]),
    (dict(dist_timeout_minutes=0), ["dist_timeout_minutes", "positive"]),
    (dict(memory_per_class=0), ["memory_per_class", "at least 1"]),
    (dict(memory_total=0), ["memory_total", "at least 1"]),
    (dict(num_classes=100, base_classes=50, phases=3), ["3 phases do not divide the 50 classes"]),
    (dict(num_classes=10, base_classes=10), ["base_classes"]),
    (dict(dataset="cifar10"), ["unknown dataset 'cifar10'", "cifar100"]),
    (dict(model="resnet50"), ["resnet50"]),
    (dict(lambda_direction="printed"), ["lambda_direction"]),
    (dict(nme_flip="vertical"), ["nme_flip", "channels, horizontal, none"]),
    (dict(cosine_normalization=False), ["less_forget", "cosine_normalization"]),
    (dict(cosine_normalization=False, less_forget=False), ["inter_class_separation"]),
])
def test_bad_values_raise_one_line_config_errors(overrides, words):
    with pytest.raises(ConfigError) as info:
        make_config("lucir", **overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="unknown preset 'lucri' \\(did you mean 'lucir'\\?\\)"):
        make_config("lucri")


def test_presets_are_switch_sets():
    for name in PRESETS:
        make_config(name)  # every preset is valid as it stands
    icarl = make_config("icarl")
    assert not icarl.cosine_normalization and icarl.resolved_last_relu and icarl.distillation
    assert not icarl.less_forget and not icarl.inter_class_separation
    finetune = make_config("finetune")
    assert not finetune.distillation and not finetune.joint_training
    assert make_config("joint").joint_training
    assert make_config("cn_lc_is_cbf").class_balanced_finetune
    cn = make_config("cn")
    assert cn.cosine_normalization and not cn.less_forget and not cn.inter_class_separation
    smoke = make_config("smoke", epochs=10)
    assert smoke.dataset == "synthetic" and smoke.epochs == 10  # overrides win over the preset


def test_resolved_model_per_dataset():
    assert make_config(dataset="cifar100").resolved_model == "resnet32"
    assert make_config(dataset="tiny_imagenet").resolved_model == "resnet18"
    assert make_config(dataset="imagenet").resolved_model == "resnet18"
    assert make_config(dataset="imagenet", model="resnet32").resolved_model == "resnet32"
    assert make_config(last_relu=True).resolved_last_relu is True


def test_imagenet_takes_the_papers_imagenet_defaults_unless_given():
    cifar = make_config("lucir")
    for dataset in ("imagenet", "imagenet_subset"):
        c = make_config("lucir", dataset=dataset)
        assert (c.epochs, c.lr_milestones, c.lambda_base, c.weight_decay) == (90, (30, 60), 10.0, 1e-4)
        assert c.class_balanced_finetune and c.nme_flip == "none" and c.resolved_model == "resnet18"
        assert c.base_classes == (500 if dataset == "imagenet" else 50)
        # what is given explicitly wins, from an override or from the preset
        given = make_config("lucir", dataset=dataset, epochs=70, nme_flip="channels", class_balanced_finetune=False)
        assert (given.epochs, given.nme_flip, given.class_balanced_finetune) == (70, "channels", False)
        assert given.lr_milestones == (30, 60) and given.lambda_base == 10.0
        icarl = make_config("icarl", dataset=dataset)
        assert icarl.epochs == 90 and icarl.weight_decay == 1e-4 and not icarl.class_balanced_finetune  # CBF: LUCIR only
    # other datasets keep the CIFAR-100 defaults
    for dataset in ("cifar100", "tiny_imagenet", "synthetic"):
        c = make_config("lucir", dataset=dataset)
        assert (c.epochs, c.lambda_base, c.nme_flip, c.class_balanced_finetune) == (160, 5.0, "channels", False)
    assert cifar.to_dict() == Config().to_dict()
    # a stored ImageNet config is rebuilt as it was written, whatever the defaults
    old = make_config("lucir", dataset="imagenet_subset", nme_flip="channels", epochs=90).to_dict()
    assert config_from_dict(old).to_dict() == old


def test_run_help_shows_both_defaults(tmp_path):
    text = dict((name, default) for name, default, _ in field_help())
    assert text["epochs"] == "160 (imagenet, imagenet_subset: 90)"
    assert text["lr_milestones"] == "(80, 120) (imagenet, imagenet_subset: (30, 60))"
    assert "imagenet_subset with preset lucir: True" in text["class_balanced_finetune"]
    proc = _python_m_lucir(["run", "--preset", "lucir", "--set", "dataset=imagenet_subset", "--help"], tmp_path)
    assert proc.returncode == 0
    head = proc.stdout.split("config fields")[0]
    assert "dataset=imagenet_subset" in head and "epochs = 90" in head and "lambda_base = 10.0" in head
    assert "nme_flip = 'none'" in head and "class_balanced_finetune = True" in head
    assert "epochs = 160 (imagenet, imagenet_subset: 90)" in proc.stdout


def test_config_json_round_trip():
    c = make_config("icarl", epochs=3, lr_milestones=(1, 2), memory_total=100, num_classes=10, base_classes=4,
                    phases=3)
    d = json.loads(c.to_json())
    assert d["lr_milestones"] == [1, 2]
    assert config_from_dict(d) == c
    # config.json written while nme_flip was a bool reads as the view it meant
    assert config_from_dict({**d, "nme_flip": True}).nme_flip == "horizontal"
    assert config_from_dict({**d, "nme_flip": False}).nme_flip == "none"


# --------------------------------------------------------------------------- command line, in process
def _tiny_args(tmp_path, *extra):
    return ["--set", f"cache_dir={tmp_path / 'cache'}", "--set", "progress=false", "--set", "device=cpu",
            "--set", "epochs=1", "--set", "lr_milestones=1", "--set", "train_per_class=8", "--set", "test_per_class=4", *extra]


def _run_main(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _truncated_tiny_imagenet(tmp_path):
    src = need(TINY_IMAGENET_DIR)
    bad = tmp_path / "tiny_imagenet_subset"
    bad.mkdir()
    for f in src.iterdir():
        if f.name == "val_jpeg.npz":
            (bad / f.name).write_bytes(f.read_bytes()[:50_000])
        else:
            (bad / f.name).symlink_to(f)
    return bad


BAD_INPUTS = {
    "unknown field": (["--set", "lamda_base=3"], ["unknown config field 'lamda_base'", "lambda_base"]),
    "wrong type": (["--set", "epochs=abc"], ["epochs", "expects int", "abc"]),
    "wrong bool": (["--set", "imprint=perhaps"], ["imprint", "true or false"]),
    "no equals sign": (["--set", "epochs"], ["FIELD=VALUE", "epochs"]),
    "phases do not divide": (["--set", "phases=4"], ["4 phases do not divide the 6 classes"]),
    "memory per class below 1": (["--set", "memory_per_class=0"], ["memory_per_class", "at least 1"]),
    "memory total below 1": (["--set", "memory_total=0"], ["memory_total", "at least 1"]),
    "memory total below classes": (["--set", "memory_total=5"], ["memory_total", "10 classes"]),
    "unknown dataset": (["--set", "dataset=cifar10"], ["unknown dataset 'cifar10'", "cifar100"]),
    "unknown device": (["--set", "device=gpu"], ["device", "gpu"]),
    "negative lr": (["--set", "lr=-0.1"], ["lr", "positive"]),
    "LC without CN": (["--set", "cosine_normalization=false"], ["cosine_normalization"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_one_line_no_traceback(case, tmp_path, capsys):
    extra, words = BAD_INPUTS[case]
    argv = ["run", "--preset", "smoke", "--out", str(tmp_path / "out")] + _tiny_args(tmp_path) + extra
    code, _, err = _run_main(capsys, argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_cli_unknown_preset(tmp_path, capsys):
    code, _, err = _run_main(capsys, ["run", "--preset", "icarll", "--out", str(tmp_path)])
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "unknown preset 'icarll'" in err and "'icarl'" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cli_cuda_without_gpu(tmp_path, capsys):
    code, _, err = _run_main(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path / "o")]
                             + _tiny_args(tmp_path, "--set", "device=cuda"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "CUDA is not available" in err


def test_cli_missing_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LUCIR_DATA", raising=False)
    missing = tmp_path / "nowhere"
    argv = ["run", "--preset", "lucir", "--out", str(tmp_path / "out"), "--set", "dataset=tiny_imagenet",
            "--set", f"data_dir={missing}", "--set", f"cache_dir={tmp_path}", "--set", "progress=false"]
    code, _, err = _run_main(capsys, argv)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert str(missing) in err and "LUCIR_DATA" in err and "Traceback" not in err


def test_cli_corrupt_data_folder(tmp_path, capsys):
    bad = _truncated_tiny_imagenet(tmp_path)
    argv = ["run", "--preset", "lucir", "--out", str(tmp_path / "out"), "--set", "dataset=tiny_imagenet",
            "--set", f"data_dir={bad}", "--set", f"cache_dir={tmp_path}", "--set", "progress=false",
            "--set", "image_size=32"]
    code, _, err = _run_main(capsys, argv)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "corrupt" in err and str(bad) in err and "Traceback" not in err


def test_cli_diverging_run_is_one_line(tmp_path, capsys):
    argv = ["run", "--preset", "smoke", "--out", str(tmp_path / "out")] + _tiny_args(tmp_path, "--set", "lr=1e30")
    code, _, err = _run_main(capsys, argv)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "became" in err and "Traceback" not in err


def test_cli_out_dir_with_other_config(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(make_config("smoke", lambda_base=1.0).to_json())
    monkeypatch.setattr(lucir.trainer, "load_dataset", lambda c: pytest.fail("must stop before loading data"))
    code, _, err = _run_main(capsys, ["run", "--preset", "smoke", "--out", str(out)] + _tiny_args(tmp_path))
    assert code == 2 and "different config" in err and "lambda_base" in err


def test_cli_interrupt_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(config, out_dir):
        raise KeyboardInterrupt
    monkeypatch.setattr(lucir.trainer, "run_incremental", interrupted)
    code, _, err = _run_main(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path)] + _tiny_args(tmp_path))
    assert code == 130 and "resumes" in err and "Traceback" not in err


# --------------------------------------------------------------------------- command line, subprocess
def _python_m_lucir(args, tmp_path, timeout=240):
    env = dict(os.environ, LUCIR_CACHE=str(tmp_path / "env_cache"))
    return subprocess.run([sys.executable, "-m", "lucir", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=tmp_path)


def test_help_lists_every_config_field(tmp_path):
    proc = _python_m_lucir(["run", "--help"], tmp_path)
    assert proc.returncode == 0
    for f in fields(Config):
        assert f"  {f.name} = " in proc.stdout, f.name
    for preset in PRESETS:
        assert preset in proc.stdout


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    proc = _python_m_lucir(["run", "--preset", "smoke", "--set", "lamda_base=3", "--out", str(tmp_path / "o")],
                           tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config field 'lamda_base' (did you mean 'lambda_base'?)"


def test_subprocess_missing_data_has_no_traceback(tmp_path):
    proc = _python_m_lucir(["run", "--preset", "lucir", "--set", "dataset=tiny_imagenet", "--set",
                            f"data_dir={tmp_path / 'none'}", "--set", f"cache_dir={tmp_path}",
                            "--out", str(tmp_path / "o")], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "none") in proc.stderr


def test_cli_smoke_run_writes_outputs(tmp_path):
    # the smoke preset with fewer epochs and images, so that it takes seconds on 2 CPU cores
    out = tmp_path / "smoke"
    proc = _python_m_lucir(["run", "--preset", "smoke", "--out", str(out)]
                           + _tiny_args(tmp_path, "--set", "memory_per_class=2"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "average incremental accuracy" in proc.stdout
    assert "Traceback" not in proc.stderr
    for name in ("config.json", "metrics.json", "metrics.csv", "confusion_phase0.npy", "confusion_phase2.npy",
                 "checkpoints/phase_0.pt", "checkpoints/phase_2.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and [p["classes_seen"] for p in metrics["phases"]] == [4, 7, 10]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "synthetic" and config["epochs"] == 1
    assert list(Path(config["cache_dir"]).glob("base/*.pt"))  # the base cache went to the tmp folder
