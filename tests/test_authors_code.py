"""benchmarks/authors_code.py: the patches, the CIFAR pickles, the log parsing and the table, without
the authors' code; and the whole harness at its --tiny setting when LUCIR_AUTHORS_CODE points at a
checkout of hshustc/CVPR19_Incremental_Learning."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import process_alive

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("authors_code", REPO / "benchmarks" / "authors_code.py")
ac = importlib.util.module_from_spec(_spec)
sys.modules["authors_code"] = ac
_spec.loader.exec_module(ac)

SCRIPT = "cifar100-class-incremental/class_incremental_cosine_cifar100.py"
TRAINER = "utils_incremental/incremental_train_and_eval_MR_LF.py"
UTILS = "cifar100-class-incremental/utils_pytorch.py"


def test_patches_have_reasons_touch_only_the_lucir_script_and_are_documented():
    ps = ac.patches()
    assert [p.name[:2] for p in ps] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    doc = (REPO / "docs" / "authors_code.md").read_text()
    for p in ps:
        assert p.reason.startswith("Needed "), p.name  # each says what it is needed for
        assert set(p.files) <= {SCRIPT, TRAINER, UTILS}, p.name
        stem = p.name.removesuffix(".patch")
        assert stem[3:] in ac.__doc__ and p.name in doc, f"{p.name} is not listed in the docstring and docs"


def test_apply_patch_replaces_exactly_the_hunk_and_refuses_other_code(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "x.py"
    f.write_text("one\ntwo\nthree\nfour\ntwo\n")
    patch_file = tmp_path / "p.patch"
    patch_file.write_text("Needed for a test.\n\ndiff --git a/a/x.py b/a/x.py\nindex 1..2 100644\n--- a/a/x.py\n"
                          "+++ b/a/x.py\n@@ -3,3 +3,3 @@\n three\n four\n-two\n+TWO\n")
    p = ac.read_patch(patch_file)
    assert p.reason == "Needed for a test." and p.files == ["a/x.py"]
    ac.apply_patch(tmp_path, p)
    assert f.read_text() == "one\ntwo\nthree\nfour\nTWO\n"  # the second 'two', where the context says
    with pytest.raises(RuntimeError, match="not in a/x.py"):
        ac.apply_patch(tmp_path, p)  # applied already: its old text is gone
    # a folder inside a repository is patched as a folder of its own (git apply alone would take the
    # paths from the repository's top and skip them)
    repo = tmp_path / "repo"
    (repo / "code" / "a").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "code" / "a" / "x.py").write_text("one\ntwo\nthree\nfour\ntwo\n")
    ac.apply_patch(repo / "code", p)
    assert (repo / "code" / "a" / "x.py").read_text() == "one\ntwo\nthree\nfour\nTWO\n"


def test_each_real_hunk_applies_to_its_own_old_text(tmp_path):
    for p in ac.patches():
        for k, h in enumerate(p.hunks):
            root = tmp_path / f"{p.name}_{k}"
            f = root / h.path
            f.parent.mkdir(parents=True)
            f.write_text("\n".join(["# before"] + h.old + ["# after"]))
            ac.apply_patch(root, ac.Patch(p.name, p.reason, [h]))
            assert f.read_text() == "\n".join(["# before"] + h.new + ["# after"])


def test_cifar_pickles_read_back_by_torchvision_pixel_for_pixel(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    rng = np.random.default_rng(0)
    tx, ty = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), np.array([3, 0, 99, 5, 3, 1, 2])
    vx, vy = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), np.array([9, 8, 7])
    names = [f"c{i}" for i in range(100)]
    ac.write_cifar_pickles(tx, ty, vx, vy, names, tmp_path)
    # what patch 01 does inside the authors' script: accept existing files whatever their md5
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    train = tv_cifar.CIFAR100(str(tmp_path), train=True, download=True)
    test = tv_cifar.CIFAR100(str(tmp_path), train=False, download=False)
    assert np.array_equal(train.data, tx) and train.targets == ty.tolist()
    assert np.array_equal(test.data, vx) and test.targets == vy.tolist()
    assert train.classes == names
    assert np.array_equal(np.asarray(train[2][0]), tx[2])  # the PIL image the transforms get


def test_the_scheduler_patch_restores_pytorch_04s_schedule():
    """PyTorch 0.4: scheduler.step() at the start of epoch e set lr(e) = 0.1 * 0.1^#{m <= e}. Today
    that call order divides one epoch early; after the epoch (patch 03) it gives 0.4's schedule."""
    def lrs(step_first):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [4, 6], 0.1)
        out = []
        for _ in range(8):
            if step_first:
                sched.step()
            out.append(round(opt.param_groups[0]["lr"], 6))
            opt.step()
            if not step_first:
                sched.step()
        return out
    pytorch_04 = [round(0.1 * 0.1 ** sum(m <= e for m in (4, 6)), 6) for e in range(8)]
    assert lrs(step_first=False) == pytorch_04 == [0.1] * 4 + [0.01] * 2 + [0.001] * 2
    with pytest.warns(UserWarning):
        assert lrs(step_first=True) == [0.1] * 3 + [0.01] * 2 + [0.001] * 3


def test_the_margin_ranking_patch_changes_no_value_or_gradient():
    """PyTorch 0.4 computed (-target * (x1 - x2) + m).clamp(0).mean() with x1, x2 of shape (N, 1) and
    target (N,) by broadcasting to (N, N); patch 08 passes target (N, 1) to today's loss."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(12, 1, generator=g, requires_grad=True)
    x2 = torch.rand(12, 1, generator=g, requires_grad=True)
    old = (-torch.ones(12) * (x1 - x2) + 0.5).clamp_min(0)
    assert old.shape == (12, 12)
    old = old.mean()
    old_grads = torch.autograd.grad(old, (x1, x2))
    new = torch.nn.MarginRankingLoss(margin=0.5)(x1, x2, torch.ones(12, 1))
    new_grads = torch.autograd.grad(new, (x1, x2))
    assert torch.allclose(old, new, atol=1e-7) and old.item() > 0
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(old_grads, new_grads))
    with pytest.raises(RuntimeError, match="same dimension"):
        torch.nn.MarginRankingLoss(margin=0.5)(x1, x2, torch.ones(12))  # the unpatched call


def _acc_block(cnn, icarl, ncm):
    return (f"  top 1 accuracy CNN            :\t\t{cnn:.2f} %\n"
            f"  top 1 accuracy iCaRL          :\t\t{icarl:.2f} %\n"
            f"  top 1 accuracy NCM            :\t\t{ncm:.2f} %\n")


def _phase(batch, cum, ori=(99.0, 98.0, 97.0)):
    return (f"Batch of classes number {batch} arrives ...\nEpoch: 0, LR: [0.1]\n"
            "Computing accuracy on the original batch of classes...\n" + _acc_block(*ori) +
            "Computing cumulative accuracy...\n" + _acc_block(*cum) + "Computing confusion matrix...\n")


def test_parse_authors_log_takes_cumulative_accuracies_of_the_last_attempt():
    first = _phase(2, (50.0, 49.0, 48.0)) + _phase(3, (40.0, 39.0, 38.0)) + "Batch of classes number 4 arrives ...\n"
    resumed = _phase(2, (50.0, 49.0, 48.0)) + _phase(3, (40.0, 39.0, 38.0)) + _phase(4, (30.5, 29.25, 28.0))
    rows = ac.parse_authors_log(first + resumed)
    assert [(r["batch"], r["acc_cnn"], r["acc_nme"], r["acc_ncm_all"]) for r in rows] == [
        (2, 50.0, 49.0, 48.0), (3, 40.0, 39.0, 38.0), (4, 30.5, 29.25, 28.0)]
    assert ac.parse_authors_log(first)[-1]["batch"] == 3  # an unfinished phase gives no row


def _fake_runs(tmp_path):
    """Finished runs of both sides at a 2-phase setting, as the programs leave them."""
    setting = ac.Setting(num_classes=20, base_classes=10, phases=2, epochs=1)
    pairs = ac.make_runs(setting, 2, tmp_path, tmp_path / "code", tmp_path / "data")
    curves = {("ours", 1): [(0.60, 0.58), (0.50, 0.49), (0.40, 0.41)],
              ("ours", 2): [(0.62, 0.60), (0.52, 0.47), (0.44, 0.43)],
              ("authors", 1): [(61.0, 59.0), (51.0, 50.0), (41.0, 40.0)],
              ("authors", 2): [(63.0, 57.0), (49.0, 48.0), (39.0, 42.0)]}
    for pair in pairs:
        for r in pair:
            r.folder.mkdir(parents=True)
            c = curves[(r.impl, r.index)]
            if r.impl == "ours":
                phases = [{"phase": t, "classes_seen": 10 + 5 * t, "acc_cnn": a, "acc_nme": b} for t, (a, b) in enumerate(c)]
                (r.folder / "metrics.json").write_text(json.dumps({"phases": phases}))
            else:
                (r.folder / "checkpoint").mkdir()
                from lucir.data import class_order
                with open(r.folder / "checkpoint" / "seed_1993_cifar100_order_run_0.pkl", "wb") as fh:
                    pickle.dump(np.array(class_order(100, 1993)[:20]), fh)
                log = "".join(_phase(2 + t, (a, b, 1.0)) for t, (a, b) in enumerate(c))
                (r.folder / "log_attempt1.txt").write_text(log)
                arr = np.zeros((4, 3, 1))
                arr[1:, :, 0] = [(a, b, 1.0) for a, b in c]
                torch.save(arr, r.folder / "checkpoint" / (f"{ac.CKP_PREFIX}_nb_cl_fg_10_nb_cl_5_nb_protos_20_run_0_"
                                                           "top1_acc_list_cumul.pth"))
            (r.folder / "harness.json").write_text(json.dumps({"attempts": [{"seconds": 60.0 * r.index}]}))
    return setting, pairs


def test_report_tables_hold_every_phase_mean_and_spread(tmp_path):
    setting, pairs = _fake_runs(tmp_path)
    ac.write_report(pairs, tmp_path / "out", setting, tiny=False)
    with open(tmp_path / "out" / "summary.csv") as fh:
        summary = {r["run"]: r for r in csv.DictReader(fh)}
    assert float(summary["ours seed 1"]["avg_incremental_acc_cnn"]) == pytest.approx((62 + 52 + 44) / 3)
    assert float(summary["authors' run 2"]["avg_incremental_acc_nme"]) == pytest.approx((57 + 48 + 42) / 3)
    assert float(summary["authors' run 2"]["wall_seconds"]) == 120.0
    with open(tmp_path / "out" / "per_phase.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4 * 3
    md = (tmp_path / "out" / "table.md").read_text()
    # phase 0: ours CNN 60, 62 -> 61.00 ± 1.41 (sample std); authors' CNN 61, 63 -> 62.00 ± 1.41
    assert "| 0 | 10 | 61.00 ± 1.41 | 62.00 ± 1.41 | 59.00 ± 1.41 | 58.00 ± 1.41 | -1.00 | +1.00 |" in md
    # CNN averages: ours 50.00, 52.67; the authors' 51.00, 50.33; per phase ours - authors' -1, +1, +2
    assert ("CNN, average incremental accuracy ours - authors' +0.67 (each run: ours 50.00, 52.67; "
            "the authors' 51.00, 50.33); per phase from -1.00 to +2.00.") in md
    assert "drew the same order as ours" in md and "Wall time per run, authors' code: 1.50 ± 0.71 min (summed" in md
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


def test_old_and_new_class_accuracy_from_a_confusion_matrix_by_hand():
    cm = np.array([[3, 1, 0, 0], [1, 2, 1, 0], [0, 0, 4, 0], [0, 1, 1, 2]])
    # 2 old classes: 3 + 2 of their 8 images right; new: 4 + 2 of 8; the base phase: all 11 of 16 are new
    assert ac.old_new_accuracy(cm, 2) == {"acc_old_cnn": 62.5, "acc_new_cnn": 75.0}
    assert ac.old_new_accuracy(cm, 0) == {"acc_old_cnn": None, "acc_new_cnn": 68.75}
    assert ac.old_new_accuracy(None, 2) == {"acc_old_cnn": None, "acc_new_cnn": None}


def test_report_splits_each_phase_into_old_and_new_classes(tmp_path):
    """The authors' script pickles a (CNN, iCaRL, NCM) stack of confusion matrices after each phase
    (rows by position in the class order); ours writes old- and new-class accuracy in metrics.json."""
    setting, pairs = _fake_runs(tmp_path)
    for ours, auth in pairs:
        metrics = json.loads((ours.folder / "metrics.json").read_text())
        for p in metrics["phases"][1:]:
            p.update(acc_old_cnn=0.30 + 0.02 * ours.index, acc_new_cnn=0.70)
        (ours.folder / "metrics.json").write_text(json.dumps(metrics))
        for t, seen in enumerate((10, 15, 20)):
            cm = np.zeros((3, seen, seen))
            cm[0] = np.eye(seen) * 4 + (1 - np.eye(seen)) * 6 / (seen - 1)  # 4 of 10 images right, every class
            cm[0, seen - 5:, seen - 5:] += np.eye(5) * 4  # new classes: 8 of 14 right
            with open(auth.folder / "checkpoint" / (f"{ac.CKP_PREFIX}_nb_cl_fg_10_nb_cl_5_nb_protos_20_run_0_"
                                                    f"iteration_{1 + t}_confusion_matrix.pth"), "wb") as fh:
                pickle.dump(cm, fh, 2)
    rows = pairs[0][1].rows()
    assert rows[0]["acc_old_cnn"] is None and rows[0]["acc_new_cnn"] == pytest.approx(100 * (40 + 20) / (100 + 20))
    assert rows[2]["acc_old_cnn"] == pytest.approx(40.0) and rows[2]["acc_new_cnn"] == pytest.approx(100 * 8 / 14)
    ac.write_report(pairs, tmp_path / "out", setting, tiny=False)
    md = (tmp_path / "out" / "table.md").read_text()
    # phase 2: ours old 32, 34 -> 33.00 ± 1.41; the authors' old 40 in both runs; new 70 against 57.14
    assert "| 2 | 33.00 ± 1.41 | 40.00 ± 0.00 | 70.00 ± 0.00 | 57.14 ± 0.00 | -7.00 | +12.86 |" in md
    with open(tmp_path / "out" / "per_phase.csv") as fh:
        assert {r["acc_old_cnn"] for r in csv.DictReader(fh) if r["phase"] == "0"} == {""}


def test_a_log_that_disagrees_with_the_saved_array_is_an_error(tmp_path):
    setting, pairs = _fake_runs(tmp_path)
    auth = pairs[0][1]
    log = auth.folder / "log_attempt1.txt"
    log.write_text(log.read_text().replace("51.00", "52.00"))
    with pytest.raises(RuntimeError, match="disagrees"):
        auth.rows()


def test_a_run_of_ours_under_way_is_neither_finished_nor_in_the_table(tmp_path):
    """metrics.json grows a phase at a time: a run cut off after some phases must be run again (it
    resumes), not taken as done, and its phases so far must not enter the averages."""
    setting, pairs = _fake_runs(tmp_path)
    ours = pairs[1][0]
    metrics = json.loads((ours.folder / "metrics.json").read_text())
    metrics["phases"] = metrics["phases"][:2]
    (ours.folder / "metrics.json").write_text(json.dumps(metrics))
    assert ours.rows() is None and not ac._finished(ours) and ac._finished(pairs[0][0])
    ac.write_report(pairs, tmp_path / "out", setting, tiny=False)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "(ours: 1, authors': 2)" in md and "| ours seed 1 |" not in md


def test_matched_setting_flags():
    ours = ac.MATCHED.ours_args(1)
    for s in ("phases=10", "epochs=8", "lr_milestones=4,6", "base_epochs=8", "base_lr_milestones=4,6", "seed=1"):
        assert s in ours
    a = ac.MATCHED.authors_args()
    flags = dict(zip(a[::1], a[1:]))
    assert flags["--nb_cl_fg"] == "50" and flags["--nb_cl"] == "5" and flags["--epochs"] == "8"
    assert flags["--lr_strat"] == "4,6" and flags["--nb_protos"] == "20" and flags["--num_classes"] == "100"
    assert {"--less_forget", "--adapt_lamda", "--mr_loss", "--imprint_weights", "--resume"} <= set(a)


@pytest.mark.skipif(not os.environ.get("LUCIR_AUTHORS_CODE"),
                    reason="set LUCIR_AUTHORS_CODE to a checkout of hshustc/CVPR19_Incremental_Learning "
                           "to run the harness end to end (--tiny)")
def test_harness_tiny_end_to_end(tmp_path):
    out = tmp_path / "out"
    rc = ac.main(["--authors", os.environ["LUCIR_AUTHORS_CODE"], "--tiny", "--work", str(tmp_path / "work"),
                  "--out", str(out), "--no-pin"])
    assert rc == 0
    with open(out / "per_phase.csv") as fh:
        rows = list(csv.DictReader(fh))
    for impl in ("ours", "authors"):
        mine = [r for r in rows if r["implementation"] == impl]
        assert [int(r["classes_seen"]) for r in mine] == [10, 15, 20]
        assert all(0 <= float(r["acc_cnn"]) <= 100 and 0 <= float(r["acc_nme"]) <= 100 for r in mine)
    assert (out / "curves.png").exists() and "Tiny harness check" in (out / "table.md").read_text()
    # called again: nothing is run again
    t = (tmp_path / "work" / "authors_run1" / "harness.json").read_text()
    assert ac.main(["--authors", os.environ["LUCIR_AUTHORS_CODE"], "--tiny", "--work", str(tmp_path / "work"),
                    "--out", str(out), "--no-pin"]) == 0
    assert (tmp_path / "work" / "authors_run1" / "harness.json").read_text() == t


_KILLED_HARNESS = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("authors_code", sys.argv[1])
ac = importlib.util.module_from_spec(spec); sys.modules["authors_code"] = ac; spec.loader.exec_module(ac)
ac.HEARTBEAT_S = 0.5
folder = Path(sys.argv[2])
child = f"import os, time\\nopen({str(folder / 'child.pid')!r}, 'w').write(str(os.getpid()))\\nwhile True: time.sleep(0.01)"
run = ac.Run("ours", 1, folder, [sys.executable, "-c", child], {}, ac.TINY)
ac.run_pairs([(run,)], pin=False, only=None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the harness's child setup and /proc are Linux's")
def test_a_killed_harness_leaves_its_time_so_far_and_takes_its_runs_with_it(tmp_path):
    """Runs of the matched comparison outlive a session: a harness killed mid-run leaves the attempt's
    time up to its last heartbeat (counted in the run's wall time), its child process dies with it,
    and the next attempt marks that one interrupted."""
    import signal
    import subprocess
    import time
    folder = tmp_path / "run"
    harness = subprocess.Popen([sys.executable, "-c", _KILLED_HARNESS, str(REPO / "benchmarks" / "authors_code.py"),
                                str(folder)])
    record, pid_file = folder / "harness.json", folder / "child.pid"
    deadline = time.time() + 60
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text() and record.exists()
                                          and json.loads(record.read_text())["attempts"][-1]["seconds"] >= 1):
        time.sleep(0.2)
    child = int(pid_file.read_text())
    assert process_alive(child)
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    deadline = time.time() + 10
    while time.time() < deadline and process_alive(child):
        time.sleep(0.1)
    assert not process_alive(child), "the run outlived the harness"
    attempt = json.loads(record.read_text())["attempts"][-1]
    assert attempt["status"] == "running" and attempt["seconds"] >= 1 and attempt["returncode"] is None
    # the next attempt: the cut-off one is marked interrupted and still counts in the wall time
    run = ac.Run("ours", 1, folder, [sys.executable, "-c", "pass"], {}, ac.TINY)
    assert ac.run_pairs([(run,)], pin=False, only=None)  # a failure: `pass` writes no results
    first, second = run.record()["attempts"]
    assert first["status"] == "interrupted" and first["seconds"] == attempt["seconds"]
    assert second["status"] == "exited" and second["returncode"] == 0 and second["cpu_seconds"] >= 0


@pytest.mark.skipif(not os.environ.get("LUCIR_AUTHORS_CODE"),
                    reason="set LUCIR_AUTHORS_CODE to a checkout of hshustc/CVPR19_Incremental_Learning "
                           "to compare an incremental phase step for step with the authors' trainer")
def test_an_incremental_phase_trains_step_for_step_like_the_authors_trainer(tmp_path, capsys, monkeypatch):
    """Our incremental phase (lucir.trainer.train_incremental: old model, split head, old embeddings
    fixed, adaptive lambda, Eq. 9 through train_epochs) against the authors' own trainer
    (incremental_train_and_eval_MR_LF, patched) set up as their script sets up its third incremental
    phase (55 old + 5 new classes): same weights, same real CIFAR-100 images as one batch, no
    augmentation on either side (ours switched off here, theirs is its loader's, which the batch
    replaces), 3 epochs with the lr divided after 2, imprinting replaced by given weights on both.

    In float64: in float32 the two agree after one step to 1e-5, but from a random initialisation on
    one small batch the rounding (of the first BatchNorm layers' gradients above all) grows to 1e-3
    within two steps, in either program alone too (a different memory layout of the same input does
    it); in float64 the two programs end the 3 epochs equal to 1e-12."""
    import copy
    import math
    import lucir.data
    import lucir.trainer
    from conftest import CIFAR_DIR, need
    from lucir import make_config
    from lucir.data import load_dataset, normalize
    from lucir.models import build_model

    code = tmp_path / "code"
    ac.prepare_code(Path(os.environ["LUCIR_AUTHORS_CODE"]), code)
    saved = dict(sys.modules)
    sys.path.insert(0, str(code / SCRIPT.rsplit("/", 1)[0]))
    try:
        import modified_linear
        import modified_resnet_cifar
        from utils_incremental.incremental_train_and_eval_MR_LF import incremental_train_and_eval_MR_LF
    finally:
        sys.path.pop(0)
    n_old, n_new, epochs = 55, 5, 3
    c = make_config("lucir", device="cpu", progress=False, data_dir=str(need(CIFAR_DIR)),
                    num_classes=n_old + n_new, train_per_class=6, test_per_class=1, epochs=epochs,
                    lr_milestones=(2,), batch_size=n_old + n_new * 6)
    data = load_dataset(c)
    torch.set_default_dtype(torch.float64)
    try:
        memory = {k: [int(torch.nonzero(data.train_labels == k)[0])] for k in range(n_old)}  # one exemplar each
        idx = torch.cat([torch.nonzero(data.train_labels >= n_old).flatten(),
                         torch.tensor([i for k in range(n_old) for i in memory[k]])])
        x = normalize(data.train.images[idx], *data.train.stats("cpu")).contiguous()
        y = data.train_labels[idx]
        assert x.dtype == torch.float64 and len(x) == c.batch_size  # one batch an epoch on both sides

        # The authors' model as their script leaves it before its third incremental phase.
        torch.manual_seed(0)
        theirs = modified_resnet_cifar.resnet32(num_classes=50)
        theirs.train()
        with torch.no_grad():
            theirs(x)  # BatchNorm statistics away from their initial values
        w = torch.randn(n_old, 64) * 0.3
        fc = modified_linear.SplitCosineLinear(64, 50, 5)
        fc.fc1.weight.data, fc.fc2.weight.data = w[:50].clone(), w[50:].clone()
        fc.sigma.data.fill_(6.0)
        theirs.fc = fc
        ref = copy.deepcopy(theirs)
        new_w = torch.randn(n_new, 64) * 0.3
        fc = modified_linear.SplitCosineLinear(64, n_old, n_new)
        fc.fc1.weight.data, fc.fc2.weight.data = w.clone(), new_w.clone()
        fc.sigma.data = theirs.fc.sigma.data
        theirs.fc = fc

        # Ours with the same weights: one merged cosine head, as a finished phase stores it.
        ours = build_model("resnet32", n_old, cosine=True, last_relu=False)
        backbone = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
        assert [v.shape for v in backbone.values()] == [v.shape for v in ours.backbone.state_dict().values()]
        ours.backbone.load_state_dict(dict(zip(ours.backbone.state_dict(), backbone.values())))
        ours.head.weight.data.copy_(w)
        ours.head.eta.data.fill_(6.0)
        monkeypatch.setattr(lucir.trainer, "imprint_weights", lambda feats, old: new_w.clone())
        monkeypatch.setattr(lucir.data, "random_crop_flip", lambda x, pad, generator=None, params=None: x)
        recorded = {}
        train_epochs = lucir.trainer.train_epochs

        def recording(*args, **kwargs):  # keeps the summary of the last epoch, which train_incremental drops
            recorded["summary"] = train_epochs(*args, **kwargs)
            return recorded["summary"]
        monkeypatch.setattr(lucir.trainer, "train_epochs", recording)

        # Their script's lambda, optimiser and call for this phase.
        lam = 5 * math.sqrt(n_old / n_new)
        opt, sched = ac.authors_optimizer(theirs, incremental=True, milestones=[2])
        capsys.readouterr()
        incremental_train_and_eval_MR_LF(epochs, theirs, ref, opt, sched, [(x, y)], [(x, y)], 11, 9,
                                         lam, 0.5, 2, 1.0, device=torch.device("cpu"))
        printed = capsys.readouterr().out
        assert lucir.trainer.train_incremental(ours, data, range(n_old, n_old + n_new), memory, c, "cpu",
                                               torch.Generator().manual_seed(0), phase=3) == pytest.approx(lam)
    finally:
        torch.set_default_dtype(torch.float32)
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]

    # The losses of their last epoch (printed to 4 decimals) and ours (the summary of that epoch).
    their_losses = [float(v) for v in re.findall(r"Train Loss\d: ([\d.]+)", printed.split("Epoch: 2")[1])]
    assert len(their_losses) == 3 and min(their_losses) > 0  # LF, CE and the margin ranking loss all act
    s = recorded["summary"]
    assert [s["dis"], s["ce"], s["mr"]] == pytest.approx(their_losses, abs=1e-4)
    # Every weight and BatchNorm statistic after 3 epochs.
    after = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    for (name, mine), theirs_v in zip(ours.backbone.state_dict().items(), after.values()):
        assert torch.allclose(mine, theirs_v, rtol=1e-9, atol=1e-12), name
    assert torch.equal(ours.head.weight[:n_old], w) and torch.equal(theirs.fc.fc1.weight, w)  # old ones fixed
    assert torch.allclose(ours.head.weight[n_old:], theirs.fc.fc2.weight, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours.head.weight[n_old:], new_w, atol=1e-3)  # the new ones did train
    assert torch.allclose(ours.head.eta, theirs.fc.sigma, rtol=1e-9) and float(ours.head.eta.detach()) != 6.0


def _herding_module():
    spec = importlib.util.spec_from_file_location("authors_herding", REPO / "benchmarks" / "authors_herding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_authors_herding_rule_is_ours_until_it_meets_a_chosen_sample_again():
    from lucir.memory import herding
    ah = _herding_module()
    same = parted = 0
    for seed in range(40):
        f = np.random.default_rng(seed).normal(size=(30, 8)) + 0.5
        theirs, steps = ah.authors_rule(f, 10)
        assert len(theirs) == len(set(theirs)) == 10
        ours = herding(torch.from_numpy(f), 10)
        if steps == 10:  # never met a chosen sample again: the same samples in the same order
            assert theirs == ours
            same += 1
        else:
            parted += theirs != ours
    assert same > 0 and parted > 0  # both cases occur, and a revisit does change the choice
    assert ah.authors_rule(np.ones((5, 3)), 3, max_steps=50)[1] == 50  # identical samples: it gives up
