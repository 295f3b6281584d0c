"""run_incremental end to end on tiny synthetic data: tidy outputs, determinism, resume,
no retraining of a finished run, the base-phase cache, every method preset, memory budgets,
class-balanced finetune, divergence; and the trainer's pieces (batch loss, imprinting, CBF)."""
import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lucir
from lucir import losses, results, trainer
from lucir.config import make_config
from lucir.data import load_dataset
from lucir.models import Output

from conftest import TINY, comparable, file_hashes, phase_model, phase_state, tiny_config


def _same_model(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- outputs of one run
def test_run_writes_tidy_outputs(reference_run):
    config, out, metrics = reference_run
    assert json.loads((out / "config.json").read_text()) == config.to_dict()
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["complete"] is True
    phases = stored["phases"]
    assert [p["phase"] for p in phases] == [0, 1, 2]
    assert [p["classes_seen"] for p in phases] == [2, 4, 6]
    assert [p["new_classes"] for p in phases] == [2, 2, 2]
    for p in phases:
        for key in ("acc_cnn", "acc_nme"):
            assert 0.0 <= p[key] <= 1.0
    for clf in ("cnn", "nme"):
        curve = [p[f"acc_{clf}"] for p in phases]
        assert stored[f"avg_incremental_accuracy_{clf}"] == pytest.approx(sum(curve) / len(curve))
        assert stored[f"final_accuracy_{clf}"] == curve[-1]
    assert stored["class_order"] == lucir.data.class_order(6, 1993)
    assert metrics["avg_incremental_accuracy_cnn"] == stored["avg_incremental_accuracy_cnn"]


def test_confusion_matrices_match_accuracies(reference_run):
    _, out, metrics = reference_run
    for p in metrics["phases"]:
        t, n = p["phase"], p["classes_seen"]
        for name, key in ((f"confusion_phase{t}.npy", "acc_cnn"), (f"confusion_nme_phase{t}.npy", "acc_nme")):
            m = np.load(out / name)
            assert m.shape == (n, n)
            assert m.sum() == n * TINY["test_per_class"]  # every test image of the seen classes
            assert m.sum(1).tolist() == [TINY["test_per_class"]] * n
            assert np.trace(m) / m.sum() == pytest.approx(p[key])
        norms = np.load(out / f"weight_norms_phase{t}.npz")
        assert norms["weight_norm"].shape == (n,)


def test_metrics_csv_is_long_format(reference_run):
    _, out, metrics = reference_run
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == ["phase", "classes_seen", "classifier", "metric", "value"]
    assert len(table) == 3 * 2 * 3  # phases x classifiers x (acc, acc_old, acc_new)
    for p in metrics["phases"]:
        for clf in ("cnn", "nme"):
            row = table[(table.phase == p["phase"]) & (table.classifier == clf) & (table.metric == "acc")]
            assert row.value.item() == pytest.approx(p[f"acc_{clf}"])
            assert row.classes_seen.item() == p["classes_seen"]


def test_checkpoints_hold_model_memory_and_history(reference_run):
    config, out, metrics = reference_run
    for t, n in enumerate([2, 4, 6]):
        state = phase_state(out, t)
        assert state["phase"] == t and state["num_classes"] == n
        assert state["model"]["head.weight"].shape == (n, 64)
        assert sorted(state["memory"]) == list(range(n))
        assert len(state["history"]) == t + 1
    data = load_dataset(config)
    memory = phase_state(out, 2)["memory"]
    for cls, idx in memory.items():
        assert len(idx) == config.memory_per_class == len(set(idx))  # R_per exemplars per class
        assert all(int(data.train_labels[i]) == cls for i in idx)
    assert [p["exemplars"] for p in metrics["phases"]] == [4, 8, 12]


def test_lambda_is_adaptive_with_old_classes_before_the_phase(reference_run):
    _, _, metrics = reference_run
    lams = [p["lambda"] for p in metrics["phases"]]
    # Eq. 7, code direction, |Co| = classes before the phase: 5 sqrt(2/2), then 5 sqrt(4/2)
    assert lams == pytest.approx([0.0, 5.0, 5.0 * math.sqrt(2)])


def test_eta_is_learnt(reference_run):
    _, out, metrics = reference_run
    etas = [p["eta"] for p in metrics["phases"]]
    assert all(e is not None for e in etas)
    assert etas[0] != 1.0  # moved from its initial value
    assert phase_state(out, 2)["model"]["head.eta"].item() == pytest.approx(etas[-1])


def test_old_class_embeddings_are_fixed_in_incremental_phases(reference_run):
    # Sec. 3.3: less-forget keeps the old-class embeddings fixed (no step, no weight decay)
    _, out, _ = reference_run
    w0, w1, w2 = (phase_state(out, t)["model"]["head.weight"] for t in range(3))
    assert torch.equal(w1[:2], w0)
    assert torch.equal(w2[:4], w1)


def test_old_embeddings_move_without_less_forget(tmp_path):
    out = tmp_path / "cn"
    lucir.run_incremental(tiny_config("cn", tmp_path / "cache", epochs=1), out)
    w0, w1 = (phase_state(out, t)["model"]["head.weight"] for t in range(2))
    assert not torch.equal(w1[:2], w0)


# --------------------------------------------------------------------------- determinism, resume
def test_same_seeds_give_identical_runs(reference_run, tmp_path):
    config, out, metrics = reference_run
    # another process-level RNG state, and no base cache: everything is retrained
    torch.manual_seed(12345)
    torch.rand(100)
    again = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", cache_base=False), tmp_path / "again")
    assert comparable(again) == comparable(metrics)
    assert _same_model(phase_state(tmp_path / "again", 2)["model"], phase_state(out, 2)["model"])


def test_other_run_seed_gives_other_weights(reference_run, tmp_path):
    _, out, _ = reference_run
    lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", seed=1, phases=1, num_classes=4),
                          tmp_path / "seed1")
    assert not torch.equal(phase_state(tmp_path / "seed1", 0)["model"]["head.weight"],
                           phase_state(out, 0)["model"]["head.weight"])


class Interrupt(Exception):
    pass


def test_unreadable_checkpoint_is_an_error_that_names_it(reference_run, tmp_path):
    """A damaged checkpoint is not silently retrained: resuming names the file. An intact one
    loads with weights_only=True (it holds only tensors, numbers, lists and dicts)."""
    from lucir.results import CheckpointError, latest_checkpoint
    config, ref_out, _ = reference_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    assert latest_checkpoint(out)["phase"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(dict(metrics, complete=False)))
    (out / "checkpoints" / "phase_2.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match=r"checkpoint '.*phase_2\.pt' cannot be read"):
        lucir.run_incremental(config, out)


def test_interrupted_run_resumes_to_identical_metrics(reference_run, tmp_path, monkeypatch):
    config, ref_out, metrics = reference_run
    out = tmp_path / "interrupted"
    real = trainer.train_incremental

    def stop_in_phase_1(model, data, classes, memory, c, device, gen, phase, **kwargs):
        raise Interrupt(f"killed in phase {phase}")

    monkeypatch.setattr(trainer, "train_incremental", stop_in_phase_1)
    c = tiny_config("lucir", tmp_path / "cache", cache_base=False)
    with pytest.raises(Interrupt):
        lucir.run_incremental(c, out)
    assert (out / "checkpoints" / "phase_0.pt").is_file()
    assert not (out / "checkpoints" / "phase_1.pt").exists()
    partial = json.loads((out / "metrics.json").read_text())
    assert partial["complete"] is False and len(partial["phases"]) == 1

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[7])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_incremental", counting)
    monkeypatch.setattr(trainer, "train_base", lambda *a, **k: pytest.fail("phase 0 must not be retrained"))
    resumed = lucir.run_incremental(c, out)
    assert calls == [1, 2]
    assert comparable(resumed) == comparable(metrics)
    assert _same_model(phase_state(out, 2)["model"], phase_state(ref_out, 2)["model"])


def test_completed_run_is_not_retrained(reference_run, monkeypatch):
    config, out, metrics = reference_run
    for name in ("load_dataset", "train_base", "train_incremental", "update_memory", "evaluate"):
        monkeypatch.setattr(trainer, name, lambda *a, **k: pytest.fail("a finished run was retrained"))
    before = file_hashes(out)
    again = lucir.run_incremental(config, out)
    assert comparable(again) == comparable(metrics)
    # runtime fields (device, cache, progress, workers) may differ; the run is the same, and
    # loading it writes nothing: config.json stays as the run was trained
    runtime = tiny_config("lucir", out.parent / "elsewhere", progress=True, workers=1, checkpoint_every=2)
    again = lucir.run_incremental(runtime, out)
    assert comparable(again) == comparable(metrics)
    assert file_hashes(out) == before
    assert json.loads((out / "config.json").read_text()) == config.to_dict()


def test_unfinished_run_records_the_runtime_fields_it_goes_on_with(reference_run, tmp_path):
    config, _, _ = reference_run
    out = tmp_path / "run"
    results.prepare_out_dir(out, config)
    assert json.loads((out / "config.json").read_text())["progress"] is False
    results.prepare_out_dir(out, tiny_config("lucir", config.cache_dir, progress=True))
    assert json.loads((out / "config.json").read_text())["progress"] is True


def test_all_phases_checkpointed_but_not_marked_complete(reference_run, tmp_path, monkeypatch):
    config, ref_out, metrics = reference_run
    out = tmp_path / "copy"
    shutil.copytree(ref_out, out)
    stored = json.loads((out / "metrics.json").read_text())
    stored["complete"] = False
    (out / "metrics.json").write_text(json.dumps(stored))
    for name in ("train_base", "train_incremental", "update_memory"):
        monkeypatch.setattr(trainer, name, lambda *a, **k: pytest.fail("nothing is left to train"))
    again = lucir.run_incremental(config, out)
    assert again["complete"] is True
    assert comparable(again) == comparable(metrics)


def test_other_config_in_same_out_dir_is_refused(reference_run):
    config, out, _ = reference_run
    with pytest.raises(lucir.ConfigError, match="different config.*lambda_base"):
        lucir.run_incremental(tiny_config("lucir", config.cache_dir, lambda_base=1.0), out)


def test_divergence_stops_and_keeps_finished_checkpoints(reference_run, tmp_path, monkeypatch):
    config, ref_out, metrics = reference_run
    out = tmp_path / "diverged"
    real = trainer.batch_loss

    def nan_in_phase_2(c, out_, old, targets, n_old, lam):
        terms = real(c, out_, old, targets, n_old, lam)
        if n_old == 4:
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    monkeypatch.setattr(trainer, "batch_loss", nan_in_phase_2)
    with pytest.raises(lucir.TrainingDiverged, match="nan"):
        lucir.run_incremental(config, out)
    assert not (out / "checkpoints" / "phase_2.pt").exists()
    for t in (0, 1):  # the finished phases are intact and equal to the uninterrupted run's
        assert _same_model(phase_state(out, t)["model"], phase_state(ref_out, t)["model"])
    assert json.loads((out / "metrics.json").read_text())["complete"] is False
    monkeypatch.setattr(trainer, "batch_loss", real)
    assert comparable(lucir.run_incremental(config, out)) == comparable(metrics)


def test_huge_learning_rate_raises_training_diverged(tmp_path):
    with pytest.raises(lucir.TrainingDiverged):
        lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", lr=1e30, epochs=1), tmp_path / "out")


# --------------------------------------------------------------------------- base-phase cache
def test_base_phase_cache_is_reused_across_incremental_settings(reference_run, tmp_path, monkeypatch):
    config, ref_out, metrics = reference_run
    cached = list((Path(config.cache_dir) / "base").glob("*.pt"))
    assert cached, "the reference run did not write a base-phase cache"
    monkeypatch.setattr(trainer, "train_base", lambda *a, **k: pytest.fail("the cached base phase was retrained"))
    c = tiny_config("lucir", config.cache_dir, lambda_base=2.0, memory_per_class=3, inter_class_separation=False)
    other = lucir.run_incremental(c, tmp_path / "other")
    assert _same_model(phase_state(tmp_path / "other", 0)["model"], phase_state(ref_out, 0)["model"])
    assert other["phases"][0]["acc_cnn"] == metrics["phases"][0]["acc_cnn"]
    assert other["phases"][1]["lambda"] == pytest.approx(2.0)  # 2 sqrt(2/2)


def test_base_cache_key():
    c = tiny_config("lucir", "/tmp/unused")
    path = trainer.base_cache_path(c, 2)
    same = [dict(lambda_base=1.0), dict(memory_per_class=7), dict(phases=1), dict(inter_class_separation=False),
            dict(less_forget=False, inter_class_separation=False), dict(test_per_class=2), dict(progress=True)]
    for overrides in same:
        assert trainer.base_cache_path(tiny_config("lucir", "/tmp/unused", **overrides), 2) == path, overrides
    other = [dict(seed=1), dict(epochs=3), dict(lr=0.05), dict(train_per_class=7), dict(class_order_seed=1),
             dict(base_epochs=5), dict(last_relu=True), dict(eta_init=2.0), dict(batch_size=8)]
    for overrides in other:
        assert trainer.base_cache_path(tiny_config("lucir", "/tmp/unused", **overrides), 2) != path, overrides
    assert trainer.base_cache_path(tiny_config("icarl", "/tmp/unused"), 2) != path
    assert trainer.base_cache_path(c, 3) != path
    assert trainer.base_cache_path(tiny_config("lucir", "/tmp/unused", class_order_run=1), 2) != path
    assert str(path).startswith("/tmp/unused/base/")


def test_base_cache_is_keyed_by_what_the_data_is_not_where_it_lies(tmp_path):
    """The same data (the same SHA256SUMS) in two folders gives one cache file, so a base phase
    carried to another machine or folder is found there; other data gives another. A file cached
    under the old key (the data folder's path) is used while the new one does not exist."""
    def data(folder, sums):
        (folder / "cifar100").mkdir(parents=True)
        (folder / "cifar100" / "labels.npz").write_bytes(b"marker")
        (folder / "cifar100" / "SHA256SUMS").write_text(sums)
        return dict(dataset="cifar100", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    here = make_config("lucir", **data(tmp_path / "here", "ab  train_images_0.npy.xz\n"))
    there = make_config("lucir", **data(tmp_path / "there", "ab  train_images_0.npy.xz\n"))
    other = make_config("lucir", **data(tmp_path / "other", "cd  train_images_0.npy.xz\n"))
    current, legacy = trainer.base_cache_paths(here, 50)
    assert trainer.base_cache_paths(there, 50)[0] == current != trainer.base_cache_paths(other, 50)[0]
    assert trainer.base_cache_paths(there, 50)[1] != legacy  # the old key held the folder's path
    assert trainer.base_cache_path(here, 50) == current  # nothing cached yet: the new key
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"weights")
    assert trainer.base_cache_path(here, 50) == legacy  # cached before: still used
    assert trainer.base_cache_path(there, 50) == current  # another folder never had it
    current.write_bytes(b"weights")
    assert trainer.base_cache_path(here, 50) == current


# --------------------------------------------------------------------------- presets and memory
def _record_train_sizes(monkeypatch):
    sizes = []
    real = trainer.train_epochs

    def recording(model, old_model, data, train_idx, params, stage, *args, **kwargs):
        sizes.append((stage.desc, len(train_idx), old_model is not None))
        return real(model, old_model, data, train_idx, params, stage, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_epochs", recording)
    return sizes


@pytest.mark.parametrize("preset", ["lucir", "icarl", "finetune", "joint"])
def test_presets_run(preset, tmp_path, monkeypatch):
    sizes = _record_train_sizes(monkeypatch)
    metrics = lucir.run_incremental(tiny_config(preset, tmp_path / "cache", epochs=1), tmp_path / preset)
    assert metrics["complete"] and len(metrics["phases"]) == 3
    phases = metrics["phases"]
    per_class, mem = TINY["train_per_class"], TINY["memory_per_class"]
    train_sizes = [n for _, n, _ in sizes]
    with_old_model = [o for _, _, o in sizes]
    if preset == "joint":
        assert train_sizes == [2 * per_class, 4 * per_class, 6 * per_class]  # all data of seen classes
    else:
        assert train_sizes == [2 * per_class, 2 * per_class + 2 * mem, 2 * per_class + 4 * mem]  # new + exemplars
    assert with_old_model == [False] + [preset in ("lucir", "icarl")] * 2
    if preset == "lucir":
        assert phases[2]["eta"] is not None
    else:  # linear FC with bias
        assert all(p["eta"] is None for p in phases)
        assert "bias" in np.load(tmp_path / preset / "weight_norms_phase2.npz")
    if preset in ("finetune", "joint"):
        assert [p["lambda"] for p in phases] == [0.0, 0.0, 0.0]


def test_fixed_total_memory_stays_within_budget(tmp_path):
    out = tmp_path / "rtotal"
    metrics = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", memory_total=10, epochs=1), out)
    # 10 // 2 = 5 per class, then 10 // 4 = 2, then 10 // 6 = 1
    assert [p["exemplars"] for p in metrics["phases"]] == [10, 8, 6]
    memories = [phase_state(out, t)["memory"] for t in range(3)]
    assert [sorted({len(v) for v in m.values()}) for m in memories] == [[5], [2], [1]]
    for t in (1, 2):
        for cls, idx in memories[t].items():
            if cls in memories[t - 1]:  # old classes keep the first exemplars of their herding order
                assert idx == memories[t - 1][cls][:len(idx)]
    for m in memories:
        assert sum(len(v) for v in m.values()) <= 10


def test_class_balanced_finetune_runs_after_each_incremental_phase(tmp_path, monkeypatch):
    calls = []
    real = trainer.class_balanced_finetune

    def counting(model, data, memory, c, device, gen, phase, **kwargs):
        calls.append((phase, sum(len(v) for v in memory.values())))
        return real(model, data, memory, c, device, gen, phase, **kwargs)

    monkeypatch.setattr(trainer, "class_balanced_finetune", counting)
    metrics = lucir.run_incremental(tiny_config("cn_lc_is_cbf", tmp_path / "cache", epochs=1), tmp_path / "cbf")
    assert metrics["complete"]
    assert calls == [(1, 8), (2, 12)]  # balanced: the exemplars of all seen classes


def test_class_balanced_finetune_trains_only_the_classifier(reference_run):
    config, out, _ = reference_run
    model, state = phase_model(config, out, 2)
    data = load_dataset(config)
    c = tiny_config("cn_lc_is_cbf", config.cache_dir, cbf_epochs=2, cbf_lr=0.5)
    backbone = copy.deepcopy(model.backbone.state_dict())
    head = copy.deepcopy(model.head.state_dict())
    trainer.class_balanced_finetune(model, data, state["memory"], c, torch.device("cpu"),
                                    torch.Generator().manual_seed(0), 2)
    assert _same_model(model.backbone.state_dict(), backbone)  # weights and BN statistics
    assert not torch.equal(model.head.weight, head["weight"])


# --------------------------------------------------------------------------- trainer pieces
def test_new_class_weights_are_imprinted(reference_run, monkeypatch):
    config, out, _ = reference_run
    model, state = phase_model(config, out, 0)
    data = load_dataset(config)
    old_w = model.head.weight.detach().clone()
    # features of the new classes 2 and 3 under the phase-0 model, test-time transform
    model.eval()
    expected = []
    with torch.no_grad():
        for k in (2, 3):
            idx = torch.nonzero(data.train_labels == k).flatten()
            f = model(data.train.batch(idx, "cpu", train=False)).features
            mean = (f / f.norm(dim=1, keepdim=True)).mean(0)
            expected.append(mean / mean.norm() * old_w.norm(dim=1).mean())
    monkeypatch.setattr(trainer, "train_epochs", lambda *a, **k: {})  # no training: just the new head
    lam = trainer.train_incremental(model, data, range(2, 4), state["memory"], config, torch.device("cpu"),
                                    torch.Generator().manual_seed(0), 1)
    assert lam == pytest.approx(5.0)
    w = model.head.weight.detach()
    assert w.shape == (4, 64)
    assert torch.equal(w[:2], old_w)
    assert torch.allclose(w[2:], torch.stack(expected), atol=1e-5)


def _outputs(seed, n=6, classes=4, dim=5):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, classes, generator=g) * 2 - 1
    features = torch.randn(n, dim, generator=g)
    eta = 3.0
    return Output(features, scores, eta * scores)


def test_batch_loss_terms_per_method():
    out, old = _outputs(0), _outputs(1)
    old = Output(old.features, old.scores[:, :2], old.logits[:, :2])  # the old model knows 2 classes
    y = torch.tensor([0, 1, 2, 3, 2, 0])
    lam = 2.5
    ce = losses.cross_entropy(out.logits, y)

    lucir_terms = trainer.batch_loss(lucir.make_config("lucir"), out, old, y, 2, lam)  # Eq. 9
    assert set(lucir_terms) == {"ce", "dis", "mr"}
    assert torch.allclose(lucir_terms["ce"], ce)
    assert torch.allclose(lucir_terms["dis"], lam * losses.less_forget(out.features, old.features))
    assert torch.allclose(lucir_terms["mr"], losses.margin_ranking(out.scores, y, 2, 0.5, 2))

    cn = trainer.batch_loss(lucir.make_config("cn"), out, old, y, 2, lam)  # Eq. 5, no Eq. 8
    assert set(cn) == {"ce", "dis"}
    assert torch.allclose(cn["dis"], lam * losses.cosine_distillation(out.scores, old.scores))

    icarl = trainer.batch_loss(lucir.make_config("icarl"), out, old, y, 2, lam)  # Eq. 1 + Eq. 2
    assert set(icarl) == {"ce", "dis"}
    assert torch.allclose(icarl["dis"], losses.lwf_distillation(out.logits, old.logits, 2.0))

    finetune = trainer.batch_loss(lucir.make_config("finetune"), out, None, y, 2, 0.0)
    assert set(finetune) == {"ce"}

    custom = lucir.make_config("lucir", margin=0.1, K=1)
    assert torch.allclose(trainer.batch_loss(custom, out, old, y, 2, lam)["mr"],
                          losses.margin_ranking(out.scores, y, 2, 0.1, 1))


def test_b0_run_without_base_phase(tmp_path):
    # B0: base_classes = 0, the classes arrive in `phases` equal groups
    metrics = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", num_classes=4, base_classes=0,
                                                phases=2, epochs=1), tmp_path / "b0")
    assert [p["classes_seen"] for p in metrics["phases"]] == [2, 4]
    assert [p["lambda"] for p in metrics["phases"]] == pytest.approx([0.0, 5.0])


def test_base_cache_follows_xdg_cache_home_as_the_data_does(monkeypatch, tmp_path):
    """Without cache_dir and $LUCIR_CACHE the base phase is cached under $XDG_CACHE_HOME/lucir, beside
    the default data folder ($XDG_CACHE_HOME/lucir/data), else under ~/.cache/lucir."""
    from lucir.data import default_data_root
    from lucir.trainer import base_cache_path
    config = lucir.make_config("smoke")
    monkeypatch.delenv("LUCIR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base_cache_path(config, 4).parent.parent == tmp_path / "xdg" / "lucir" == default_data_root().parent
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert base_cache_path(config, 4).is_relative_to(tmp_path / "home" / ".cache" / "lucir")
    monkeypatch.setenv("LUCIR_CACHE", str(tmp_path / "mine"))
    assert base_cache_path(config, 4).is_relative_to(tmp_path / "mine")
