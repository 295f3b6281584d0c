"""Ours beside the authors' code: LUCIR on CIFAR-100, one matched setting, run side by side.

    LUCIR_DATA=../shared/data python benchmarks/authors_code.py --authors PATH [--out reports/authors_code]
        [--work DIR] [--runs 2] [--tiny] [--no-pin] [--only ours|authors] [--report-only]

PATH is a local checkout of the authors' repository (github.com/hshustc/CVPR19_Incremental_Learning;
the project does not ship it: `git clone https://github.com/hshustc/CVPR19_Incremental_Learning`).
The harness

1. copies it to WORK/code and applies the patches in benchmarks/authors_code/*.patch, in order (git apply)
   (each file starts with its reason; none touches the algorithm):
     01 cifar-files-without-md5   torchvision accepts the cifar-100-python files written from our
                                  arrays (their md5 sums differ from the official files': other
                                  image order) instead of trying to download
     02 torchvision-data-targets  CIFAR's train_data/train_labels/test_data/test_labels are
                                  data/targets in today's torchvision
     03 lr-scheduler-step-after-epoch  scheduler.step() after the epoch, as PyTorch >= 1.1 expects:
                                  called first it now skips a value, and the lr would fall one epoch
                                  earlier than under PyTorch 0.4
     04 lr-strat-flag             --lr_strat flag for the lr milestones (a module constant [80, 120];
                                  default unchanged): needed for the matched setting
     05 no-terminal               `stty size` at import fails without a terminal; width 80 then
     06 torch-load-whole-model    torch.load(..., weights_only=False) for the whole pickled models
                                  that --resume loads (PyTorch 2.6 changed the default)
     07 loader-in-process         DataLoader num_workers 2 -> 0: one process per run, on its core
     08 margin-ranking-target-shape  the margin ranking loss's target of ones is (N, 1) like its inputs:
                                  today's PyTorch refuses (N,) against (N, 1), which PyTorch 0.4 broadcast
                                  to an (N, N) matrix of identical columns (same mean, same gradients)
   The device needs no change: the harness hides CUDA from both sides (CUDA_VISIBLE_DEVICES=''), and
   the script falls back to the CPU by itself. Nor do its outputs: they are written under the working
   directory, one per run here.
2. writes torchvision's cifar-100-python layout (train, test, meta pickles) from the array format
   of $LUCIR_DATA/cifar100 into WORK/data, once;
3. runs, two processes at a time (one pinned to each core, one torch thread each), the pairs
   (ours seed 0, authors' run 1), (ours seed 1, authors' run 2), ... at the matched setting:
   full CIFAR-100 in the seed-1993 class order, B50 + 10 phases (5 classes each), 8 epochs per
   phase with the lr divided by 10 after epochs 4 and 6 (the base phase too), R_per = 20, every
   other setting at its default:
     ours:      python -m lucir run --preset lucir --set phases=10 --set epochs=8
                --set lr_milestones=4,6 --set base_epochs=8 --set base_lr_milestones=4,6 --set seed=S
     authors':  class_incremental_cosine_cifar100.py with the flags of run.sh's LUCIR line
                (--nb_cl_fg 50 --nb_cl 5 --nb_protos 20 --resume --rs_ratio 0.0 --imprint_weights
                --less_forget --lamda 5 --adapt_lamda --random_seed 1993 --mr_loss --dist 0.5 --K 2
                --lw_mr 1) plus --epochs 8 --lr_strat 4,6. The script seeds only numpy (1993: the
                class order, the same as ours); torch is not seeded, so its runs differ by chance.
   A run whose results are complete is not run again; an interrupted one continues (ours after
   its last epoch checkpoint, the authors' after its last finished phase, via --resume);
4. parses the per-phase accuracies (ours: metrics.json; the authors': the "top 1 accuracy" lines
   its script prints after "Computing cumulative accuracy...", checked against the accuracy array
   it saves) and writes into OUT: per_phase.csv (long format), summary.csv, table.md and
   curves.png (per-phase CNN and NME accuracy, ours against the authors').

--tiny checks the harness in minutes: 20 classes (10 in the base phase, then 2 phases of 5),
1 epoch per phase, one run of each. Its two sides do not use the same 20 classes (ours: the first
20 of the seed-1993 order of 100; the authors' script: classes 0-19 shuffled), so its numbers
compare nothing. --time-steps N times N training batches of each side (one thread, one after the
other), then projects the wall time of the matched comparison from the images each side pushes through
its network (timing.json in OUT).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PATCH_DIR = Path(__file__).resolve().with_name("authors_code")
SCRIPT = Path("cifar100-class-incremental") / "class_incremental_cosine_cifar100.py"
HEARTBEAT_S = 60  # how often a running attempt's time so far is written to harness.json
CKP_PREFIX = "seed_1993_rs_ratio_0.0_class_incremental_MR_LFAD_cosine_cifar100"  # run.sh's LUCIR line

# run.sh's LUCIR command (CN + LF with adaptive lambda + margin ranking loss), its flags as given there.
AUTHORS_LUCIR_FLAGS = ["--nb_protos", "20", "--resume", "--rs_ratio", "0.0", "--imprint_weights",
                       "--less_forget", "--lamda", "5", "--adapt_lamda", "--random_seed", "1993",
                       "--mr_loss", "--dist", "0.5", "--K", "2", "--lw_mr", "1", "--ckp_prefix", CKP_PREFIX]


@dataclass(frozen=True)
class Setting:
    """One matched setting, in both programs' terms."""
    num_classes: int = 100
    base_classes: int = 50
    phases: int = 10
    epochs: int = 8
    milestones: tuple[int, ...] = (4, 6)

    @property
    def per_phase(self) -> int:
        return (self.num_classes - self.base_classes) // self.phases

    def ours_args(self, seed: int) -> list[str]:
        ms = ",".join(map(str, self.milestones))
        sets = [f"phases={self.phases}", f"epochs={self.epochs}", f"lr_milestones={ms}",
                f"base_epochs={self.epochs}", f"base_lr_milestones={ms}", f"seed={seed}"]
        if self.num_classes != 100:
            sets += [f"num_classes={self.num_classes}", f"base_classes={self.base_classes}"]
        return ["--preset", "lucir"] + [a for s in sets for a in ("--set", s)]

    def authors_args(self) -> list[str]:
        return ["--num_classes", str(self.num_classes), "--nb_cl_fg", str(self.base_classes),
                "--nb_cl", str(self.per_phase), "--epochs", str(self.epochs),
                "--lr_strat", ",".join(map(str, self.milestones))] + AUTHORS_LUCIR_FLAGS


MATCHED = Setting()
TINY = Setting(num_classes=20, base_classes=10, phases=2, epochs=1, milestones=(1,))


# --------------------------------------------------------------------------- patches
@dataclass
class Hunk:
    path: str
    header: str       # its "@@ -a,b +c,d @@" line
    lines: list[str]  # its body, each line tagged " " (context), "-" or "+"

    @property
    def old(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in " -"]

    @property
    def new(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in " +"]


@dataclass
class Patch:
    name: str
    reason: str
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return sorted({h.path for h in self.hunks})

    def diff(self) -> str:
        """The unified diff that `git apply` reads."""
        out = []
        for path in self.files:
            out += [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
            for h in (h for h in self.hunks if h.path == path):
                out += [h.header, *h.lines]
        return "\n".join(out) + "\n"


def read_patch(path: Path) -> Patch:
    """A unified diff preceded by its reason (the text before the first 'diff --git' line)."""
    text = path.read_text()
    head, sep, body = text.partition("diff --git")
    if not sep:
        raise ValueError(f"{path.name}: no 'diff --git' section")
    patch = Patch(path.name, head.strip())
    cur_path, hunk = None, None
    for line in (sep + body).splitlines():
        if line.startswith(("diff --git", "index ", "--- ")):
            hunk = None
        elif line.startswith("+++ "):
            cur_path, hunk = line[4:].strip().removeprefix("b/"), None
        elif line.startswith("@@"):
            hunk = Hunk(cur_path, line, [])
            patch.hunks.append(hunk)
        elif hunk is not None:
            hunk.lines.append(line or " ")
    if not patch.reason or not patch.hunks:
        raise ValueError(f"{path.name}: a patch needs a reason and at least one hunk")
    return patch


def patches() -> list[Patch]:
    return [read_patch(p) for p in sorted(PATCH_DIR.glob("*.patch"))]


def apply_patch(root: Path, patch: Patch) -> None:
    """`git apply` of the patch to the files under `root`, all of it or nothing; a hunk whose text
    is not there (another version of the code, or applied already) is an error naming its file.
    `root` is taken as a folder of its own even inside a repository (git would otherwise apply
    the paths from that repository's top)."""
    root = Path(root).resolve()
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(root.parent)}
    done = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=root, input=patch.diff(), env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        failed = re.search(r"patch failed: (.+?):\d+", done.stderr)
        where = failed.group(1) if failed else ", ".join(patch.files)
        said = " ".join(done.stderr.split())[:300]
        raise RuntimeError(f"{patch.name}: its text is not in {where} (another version of the authors' code?): {said}")


def prepare_code(authors: Path, dest: Path) -> list[str]:
    """Copy the authors' checkout to dest and apply the patches; reused when already done."""
    marker = dest / "PATCHED.json"
    names = [p.name for p in patches()]
    if marker.exists() and json.loads(marker.read_text()).get("patches") == names:
        return names
    if not (authors / SCRIPT).is_file():
        raise SystemExit(f"error: '{authors}' is not a checkout of hshustc/CVPR19_Incremental_Learning "
                         f"(no {SCRIPT}); git clone https://github.com/hshustc/CVPR19_Incremental_Learning")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(authors, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for p in patches():
        apply_patch(dest, p)
    commit = None
    if (authors / ".git").exists():
        r = subprocess.run(["git", "-C", str(authors), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() or None
    marker.write_text(json.dumps({"authors": str(authors), "commit": commit, "patches": names}, indent=1))
    return names


# --------------------------------------------------------------------------- data
def write_cifar_pickles(train_x, train_y, test_x, test_y, names, dest: Path) -> Path:
    """torchvision's cifar-100-python layout (train, test, meta) from NHWC uint8 arrays."""
    folder = dest / "cifar-100-python"
    if (folder / "DONE").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        x = np.asarray(x, dtype=np.uint8)
        entry = {"batch_label": f"{split} (written from the array format by benchmarks/authors_code.py)",
                 "fine_labels": [int(v) for v in y],
                 "filenames": [f"{split}_{i:05d}.png" for i in range(len(x))],
                 "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1)}  # rows: R plane, G plane, B plane
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(names)}, fh, protocol=2)
    (folder / "DONE").write_text("")
    return folder


def prepare_data(dest: Path) -> Path:
    if (dest / "cifar-100-python" / "DONE").exists():
        return dest / "cifar-100-python"
    from lucir import make_config
    from lucir.data import data_root, load_cifar100
    train_x, train_y, test_x, test_y, names, source = load_cifar100(data_root(make_config("lucir")))
    folder = write_cifar_pickles(train_x, train_y, test_x, test_y, names, dest)
    (folder / "SOURCE").write_text(source + "\n")
    return folder


# --------------------------------------------------------------------------- parsing
_PHASE = re.compile(r"Batch of classes number (\d+) arrives")
_ACC = re.compile(r"top 1 accuracy (CNN|iCaRL|NCM)\s*:\s*([\d.]+) %")


def parse_authors_log(text: str) -> list[dict]:
    """Per-phase cumulative accuracies (%) from the script's log: after each 'Computing cumulative
    accuracy...' it prints CNN, iCaRL (NME with the exemplar means: the paper's LUCIR-NME) and NCM
    (means over all training images). A log holding several attempts (a resumed run prints every
    phase again) gives the phases of its last attempt."""
    out, batch, want = [], None, None
    for line in text.splitlines():
        m = _PHASE.search(line)
        if m:
            batch = int(m.group(1))
            if out and batch <= out[-1]["batch"]:
                out = [r for r in out if r["batch"] < batch]  # a later attempt repeats the phases
            continue
        if "Computing cumulative accuracy" in line:
            want = {"batch": batch}
            continue
        m = _ACC.search(line)
        if want is not None and m:
            want[{"CNN": "acc_cnn", "iCaRL": "acc_nme", "NCM": "acc_ncm_all"}[m.group(1)]] = float(m.group(2))
            if len(want) == 4:
                out.append(want)
                want = None
    return out


def authors_rows(run_dir: Path, setting: Setting) -> list[dict] | None:
    """Per-phase rows of a finished authors' run (None if unfinished), checked against its saved array."""
    acc_file = run_dir / "checkpoint" / (f"{CKP_PREFIX}_nb_cl_fg_{setting.base_classes}_nb_cl_"
                                        f"{setting.per_phase}_nb_protos_20_run_0_top1_acc_list_cumul.pth")
    logs = sorted(run_dir.glob("log_attempt*.txt"), key=lambda p: int(p.stem.removeprefix("log_attempt")))
    if not acc_file.exists() or not logs:
        return None
    rows = parse_authors_log(logs[-1].read_text(errors="replace"))
    import torch
    saved = torch.load(acc_file, weights_only=False)[:, :, 0]  # (groups, [cnn, icarl, ncm])
    start = setting.base_classes // setting.per_phase - 1
    if len(rows) != setting.phases + 1:
        raise RuntimeError(f"{run_dir}: {len(rows)} phases in the log, {setting.phases + 1} expected")
    for t, r in enumerate(rows):
        if not np.allclose(saved[start + t], [r["acc_cnn"], r["acc_nme"], r["acc_ncm_all"]], atol=0.006):
            raise RuntimeError(f"{run_dir}: phase {t}: log {r} disagrees with the saved array {saved[start + t]}")
        r.update(phase=t, classes_seen=setting.base_classes + t * setting.per_phase)
        cm = run_dir / "checkpoint" / (f"{CKP_PREFIX}_nb_cl_fg_{setting.base_classes}_nb_cl_{setting.per_phase}_"
                                       f"nb_protos_20_run_0_iteration_{start + t}_confusion_matrix.pth")
        r.update(old_new_accuracy(_authors_cnn_confusion(cm), r["classes_seen"] - setting.per_phase if t else 0))
        del r["batch"]
    return rows


def _authors_cnn_confusion(path: Path) -> np.ndarray | None:
    """The CNN confusion matrix the authors' script pickles after each phase (rows: true class,
    by position in the class order; its array stacks CNN, iCaRL and NCM), None if absent."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        return np.asarray(pickle.load(fh))[0]


def old_new_accuracy(confusion: np.ndarray | None, old_classes: int) -> dict:
    """CNN accuracy (%) on the test images of the classes seen before this phase (old) and of the
    classes it adds (new), each over all classes seen, from a confusion matrix whose rows and
    columns follow the class order; the base phase has no old classes."""
    if confusion is None:
        return {"acc_old_cnn": None, "acc_new_cnn": None}
    hits = np.diag(confusion)
    new = 100 * hits[old_classes:].sum() / confusion[old_classes:].sum()
    old = 100 * hits[:old_classes].sum() / confusion[:old_classes].sum() if old_classes else None
    return {"acc_old_cnn": None if old is None else float(old), "acc_new_cnn": float(new)}


def ours_rows(run_dir: Path, setting: Setting) -> list[dict] | None:
    """Per-phase rows of a finished run of ours (None if unfinished: metrics.json grows a phase at a
    time, so a run under way, or cut off, has fewer than every phase)."""
    f = run_dir / "metrics.json"
    if not f.exists():
        return None
    phases = json.loads(f.read_text())["phases"]
    if len(phases) != setting.phases + 1:
        return None
    pct = lambda x: None if x is None else 100 * x  # noqa: E731
    return [{"phase": p["phase"], "classes_seen": p["classes_seen"], "acc_cnn": 100 * p["acc_cnn"],
             "acc_nme": 100 * p["acc_nme"], "acc_ncm_all": None,
             "acc_old_cnn": pct(p.get("acc_old_cnn")), "acc_new_cnn": pct(p.get("acc_new_cnn"))} for p in phases]


# --------------------------------------------------------------------------- running
@dataclass
class Run:
    impl: str            # "ours" | "authors"
    index: int           # 1-based run number
    folder: Path
    cmd: list[str]
    env: dict
    setting: Setting
    data: Path | None = None  # the authors' runs: folder holding cifar-100-python (linked as ./data)

    @property
    def label(self) -> str:
        return f"ours seed {self.index - 1}" if self.impl == "ours" else f"authors' run {self.index}"

    def rows(self):
        return (ours_rows if self.impl == "ours" else authors_rows)(self.folder, self.setting)

    def record(self) -> dict:
        f = self.folder / "harness.json"
        return json.loads(f.read_text()) if f.exists() else {"attempts": []}


def make_runs(setting: Setting, runs: int, work: Path, code: Path, data: Path) -> list[tuple[Run, Run]]:
    base_env = {k: v for k, v in os.environ.items()}
    # CPU on any machine: the script picks cuda:0 whenever CUDA is visible (and its NME path would then
    # hand CUDA tensors to scipy), ours picks it with device=auto; both fall back to the CPU unpatched.
    base_env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    pairs = []
    for i in range(1, runs + 1):
        ours_dir, auth_dir = work / f"ours_seed{i - 1}", work / f"authors_run{i}"
        env_o = dict(base_env, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                     LUCIR_CACHE=str(work / "lucir_cache"))
        ours = Run("ours", i, ours_dir, [sys.executable, "-m", "lucir", "run", *setting.ours_args(i - 1),
                                         "--out", str(ours_dir)], env_o, setting)
        env_a = {k: v for k, v in base_env.items() if k != "PYTHONPATH"}
        auth = Run("authors", i, auth_dir, [sys.executable, str(code / SCRIPT), *setting.authors_args()],
                   env_a, setting, data)
        pairs.append((ours, auth))
    return pairs


def _child_setup(core: int | None):
    """In the child before exec: pin it to its core, and have it killed when the harness dies (a
    killed harness must not leave runs going that nobody times and a rerun would start again)."""
    def setup():
        if core is not None:
            os.sched_setaffinity(0, {core})
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
        except (OSError, AttributeError):
            pass
    return setup


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a running process has used so far, from /proc (Linux); else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _save_attempt(run: Run, attempt: dict) -> None:
    """Write `attempt` as the run's newest attempt in harness.json (atomically), replacing an earlier
    write of the same attempt: the harness writes it when the run starts, every HEARTBEAT_S seconds
    while it runs and when it ends, so a harness killed mid-run leaves the time spent up to then."""
    rec = run.record()
    if rec["attempts"] and rec["attempts"][-1].get("t0") == attempt["t0"]:
        rec["attempts"][-1] = attempt
    else:
        rec["attempts"].append(attempt)
    _write_record(run, rec)


def _write_record(run: Run, rec: dict) -> None:
    tmp = run.folder / "harness.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, run.folder / "harness.json")


def _start(run: Run, core: int | None, paired_with: list[str]) -> tuple[subprocess.Popen, dict, object]:
    run.folder.mkdir(parents=True, exist_ok=True)
    if run.impl == "authors":
        (run.folder / "checkpoint").mkdir(exist_ok=True)
        link = run.folder / "data"
        if not link.exists():
            link.symlink_to(run.data)
    rec = run.record()
    for a in rec["attempts"]:  # a harness killed mid-run left its last heartbeat: that attempt was cut off
        if a.get("status") == "running":
            a["status"] = "interrupted"
    log = open(run.folder / f"log_attempt{len(rec['attempts']) + 1}.txt", "w")
    log.write("$ " + " ".join(run.cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(run.cmd, cwd=run.folder if run.impl == "authors" else REPO, env=run.env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_child_setup(core))
    t0 = time.time()
    attempt = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "t0": t0, "seconds": 0.0,
               "cpu_seconds": 0.0, "returncode": None, "status": "running", "core": core, "paired_with": paired_with}
    rec["attempts"].append(attempt)
    _write_record(run, rec)
    return proc, attempt, log


def _finished(run: Run) -> bool:
    try:
        return run.rows() is not None
    except RuntimeError:  # outputs there but inconsistent: run it again (the authors' --resume reloads phases)
        return False


def _report_end(r: Run, rc: int, attempt: dict) -> bool:
    """Print how a run's process ended; whether it finished with every phase's results."""
    try:
        ok = rc == 0 and r.rows() is not None
    except RuntimeError as e:  # its log disagrees with its saved accuracies, or phases are missing
        print(f"{r.label}: {e}", flush=True)
        ok = False
    print(f"{r.label}: {'finished' if ok else f'FAILED (exit {rc})'} in {attempt['seconds']:.0f} s "
          f"(CPU {attempt['cpu_seconds']:.0f} s)", flush=True)
    return ok


def run_pairs(pairs, pin: bool, only: str | None) -> list[str]:
    """Run each pair's two processes at once; skip finished runs. Returns the failures."""
    failures = []
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for pair in pairs:
        todo = [r for r in pair if (only is None or r.impl == only) and not _finished(r)]
        for r in pair:
            if r not in todo and (only is None or r.impl == only):
                print(f"{r.label}: done, not run again ({r.folder})", flush=True)
        pending = []
        for k, r in enumerate(todo):
            core = cores[k % len(cores)] if pin and len(cores) >= 2 else None
            print(f"{r.label}: starting{f' on core {core}' if core is not None else ''} -> {r.folder}", flush=True)
            pending.append((r, *_start(r, core, [o.label for o in todo if o is not r])))
        beat = time.time()
        while pending:  # each run's wall time ends when its own process does
            if time.time() - beat >= HEARTBEAT_S:
                beat = time.time()
                for r, proc, attempt, _ in pending:
                    attempt.update(seconds=round(beat - attempt["t0"], 1),
                                   cpu_seconds=_cpu_seconds(proc.pid) or attempt["cpu_seconds"])
                    _save_attempt(r, attempt)
            ended = False
            for item in list(pending):
                r, proc, attempt, log = item
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here for its CPU time
                if not pid:
                    continue
                ended = True
                pending.remove(item)
                rc = proc.returncode = os.waitstatus_to_exitcode(status)
                log.close()
                attempt.update(seconds=round(time.time() - attempt["t0"], 1), returncode=rc, status="exited",
                               cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1))
                _save_attempt(r, attempt)
                if not _report_end(r, rc, attempt):
                    failures.append(f"{r.label}: exit {rc}, see {r.folder}/log_attempt{len(r.record()['attempts'])}.txt")
            if not ended:
                time.sleep(1.0)
    return failures


# --------------------------------------------------------------------------- report
def _fmt(values) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "—"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"


PER_PHASE = ("phase", "classes_seen", "acc_cnn", "acc_nme", "acc_ncm_all", "acc_old_cnn", "acc_new_cnn")


def write_report(pairs, out: Path, setting: Setting, tiny: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for pair in pairs for r in pair]
    data = {r.label: (r, r.rows()) for r in runs}
    long_rows, summary = [], []
    for label, (r, rows) in data.items():
        if rows is None:
            continue
        attempts = r.record()["attempts"]
        wall = sum(a["seconds"] for a in attempts)
        cpu = [a.get("cpu_seconds") for a in attempts]
        for row in rows:
            long_rows.append({"implementation": r.impl, "run": label, **{k: row[k] for k in PER_PHASE}})
        summary.append({"implementation": r.impl, "run": label,
                        "avg_incremental_acc_cnn": float(np.mean([x["acc_cnn"] for x in rows])),
                        "avg_incremental_acc_nme": float(np.mean([x["acc_nme"] for x in rows])),
                        "final_acc_cnn": rows[-1]["acc_cnn"], "final_acc_nme": rows[-1]["acc_nme"],
                        "wall_seconds": round(wall, 1),
                        "cpu_seconds": round(sum(cpu), 1) if None not in cpu else None,
                        "attempts": len(attempts)})
    with open(out / "per_phase.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["implementation", "run", *PER_PHASE])
        w.writeheader()
        w.writerows(long_rows)
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(summary[0]) if summary else ["implementation"])
        w.writeheader()
        w.writerows(summary)
    notes = [order_note(r, setting) for r in runs if r.impl == "authors" and data[r.label][1] is not None]
    (out / "table.md").write_text(markdown_table(long_rows, summary, setting, tiny, sorted(set(notes))))
    if long_rows:
        plot_curves(long_rows, out / "curves.png", setting, tiny)
    return {"runs": len(summary)}


def order_note(run: Run, setting: Setting) -> str:
    """Whether the class order the authors' script drew (it pickles it) is ours."""
    from lucir.data import class_order
    f = run.folder / "checkpoint" / "seed_1993_cifar100_order_run_0.pkl"
    if not f.exists():
        return "the authors' class order file is missing"
    with open(f, "rb") as fh:
        theirs = [int(c) for c in pickle.load(fh)]
    ours = class_order(100, 1993)[: setting.num_classes]
    if theirs == ours:
        return "Class order: the authors' script drew the same order as ours (seed 1993)."
    return (f"Class order: the authors' script's order differs from ours ({setting.num_classes} classes: "
            f"theirs starts {theirs[:5]}, ours {ours[:5]}).")


def _mean_difference(long_rows, phase: int, key: str) -> float | None:
    """Ours minus the authors' at one phase, each side the mean over its runs (None if a side lacks it)."""
    sides = [[r[key] for r in long_rows if r["implementation"] == i and r["phase"] == phase and r[key] is not None]
             for i in ("ours", "authors")]
    return float(np.mean(sides[0]) - np.mean(sides[1])) if all(sides) else None


def _average_difference(avg_runs: dict) -> float:
    """Ours minus the authors' of a per-run figure, each side the mean over its runs."""
    return float(np.mean(avg_runs["ours"]) - np.mean(avg_runs["authors"]))


def spread_note(avg: dict, diffs: dict) -> str:
    """The difference between the two programs beside the spread between runs of one program."""
    who = {"ours": "ours", "authors": "the authors'"}
    out = []
    for key, curve in (("avg_incremental_acc_cnn", "CNN"), ("avg_incremental_acc_nme", "NME")):
        v = avg[key]
        runs = "; ".join(f"{who[i]} " + ", ".join(f"{x:.2f}" for x in v[i]) for i in who)
        per_phase = [d for d in diffs["acc_" + curve.lower()] if d is not None]
        out.append(f"{curve}, average incremental accuracy ours - authors' {_average_difference(v):+.2f} "
                   f"(each run: {runs}); per phase from {min(per_phase):+.2f} to {max(per_phase):+.2f}.")
    return "Ours - authors' (means over runs). " + " ".join(out)


def _phase_cells(long_rows, phase: int, keys: tuple, both: bool) -> tuple[list[str], dict]:
    """One phase's cells of a table: for each key, ours then the authors' (mean ± std over runs);
    then, if both sides have runs, ours - authors' for each key. Also those differences by key."""
    cells, diffs = [], {}
    for key in keys:
        cells += [_fmt([r[key] for r in long_rows if r["implementation"] == i and r["phase"] == phase])
                  for i in ("ours", "authors")]
    for key in keys if both else ():
        diffs[key] = _mean_difference(long_rows, phase, key)
        cells.append("—" if diffs[key] is None else f"{diffs[key]:+.2f}")
    return cells, diffs


def _has_old_new(long_rows) -> bool:
    """Whether any run gave its CNN accuracy on old and new classes (older outputs do not)."""
    return any(r["acc_old_cnn"] is not None for r in long_rows)


def old_new_table(long_rows, both: bool) -> list[str]:
    """Where each side's accuracy comes from after the base phase: CNN accuracy on old and on new
    classes per phase, mean ± std over runs, and ours - authors' (empty if no run has them)."""
    if not _has_old_new(long_rows):
        return []
    head = ["phase"] + [f"{n} {k}" for k in ("old", "new") for n in ("ours", "authors'")]
    head += [f"{k} ours - authors'" for k in ("old", "new")] if both else []
    lines = ["\nCNN accuracy (%) on the test images of the classes seen before each phase (old) and of the "
             "classes it adds (new), over all classes seen; mean ± sample std over the runs (ours from "
             "metrics.json, the authors' from the confusion matrices their script pickles):\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted({r["phase"] for r in long_rows if r["phase"] > 0}):
        cells, _ = _phase_cells(long_rows, p, ("acc_old_cnn", "acc_new_cnn"), both)
        lines.append("| " + " | ".join([str(p), *cells]) + " |")
    return lines


def markdown_table(long_rows, summary, setting: Setting, tiny: bool, notes=()) -> str:
    impls = ["ours", "authors"]
    names = {"ours": "ours", "authors": "authors' code"}
    lines = []
    if tiny:
        lines.append("**Tiny harness check (`--tiny`): 20 classes, 1 epoch per phase, and the two sides do not "
                     "use the same classes; these numbers compare nothing.**\n")
    lines.append(f"Setting: CIFAR-100, {setting.num_classes} classes, B{setting.base_classes} + {setting.phases} "
                 f"phases of {setting.per_phase}, {setting.epochs} epoch{'s' * (setting.epochs != 1)} per phase (lr 0.1, / 10 after epochs "
                 f"{' and '.join(map(str, setting.milestones))}), R_per 20, one torch thread per run.\n")
    runs_of = {i: sorted({r["run"] for r in long_rows if r["implementation"] == i}) for i in impls}
    lines.append("Accuracy (%) on all classes seen, after each phase; mean ± sample std over the runs "
                 f"(ours: {len(runs_of['ours'])}, authors': {len(runs_of['authors'])}); NME = nearest mean of "
                 "exemplars (the authors' \"iCaRL\" column).\n")
    both = all(runs_of[i] for i in impls)  # the difference columns need a run of each side
    head = (["phase", "classes"] + [f"{names[i]} {c}" for c in ("CNN", "NME") for i in impls]
            + (["CNN ours - authors'", "NME ours - authors'"] if both else []))
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    phases = sorted({(r["phase"], r["classes_seen"]) for r in long_rows})
    diffs = {"acc_cnn": [], "acc_nme": []}
    for p, c in phases:
        cells, d = _phase_cells(long_rows, p, tuple(diffs), both)
        for key in d:
            diffs[key].append(d[key])
        lines.append("| " + " | ".join([str(p), str(c), *cells]) + " |")
    avg = {key: {i: [s[key] for s in summary if s["implementation"] == i] for i in impls}
           for key in ("avg_incremental_acc_cnn", "avg_incremental_acc_nme")}
    cells = ["average", ""] + [_fmt(runs[i]) for runs in avg.values() for i in impls]
    if both:
        cells += [f"{_average_difference(runs):+.2f}" for runs in avg.values()]
    lines.append("| " + " | ".join(f"**{c}**" if c else c for c in cells) + " |")
    if both:
        lines.append("\n" + spread_note(avg, diffs))
    lines += old_new_table(long_rows, both)
    for i in impls:
        walls = [s["wall_seconds"] / 60 for s in summary if s["implementation"] == i]
        cpus = [s["cpu_seconds"] / 60 for s in summary if s["implementation"] == i and s.get("cpu_seconds") is not None]
        if walls:
            lines.append(f"\nWall time per run, {names[i]}: {_fmt(walls)} min"
                         + (f", CPU time {_fmt(cpus)} min" if len(cpus) == len(walls) else "")
                         + " (summed over its attempts, work redone after an interruption included; which run "
                           "shared the machine with which, and when, is in each run's harness.json).")
    lines += [f"\n{n}" for n in notes]
    lines.append("\nEach run (average incremental accuracy: the mean over all phases, base phase included):\n")
    lines += ["| run | avg CNN | avg NME | final CNN | final NME | wall time | CPU time | attempts |",
              "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        cpu = "—" if s.get("cpu_seconds") is None else f"{s['cpu_seconds'] / 60:.1f} min"
        lines.append(f"| {s['run']} | {s['avg_incremental_acc_cnn']:.2f} | {s['avg_incremental_acc_nme']:.2f} | "
                     f"{s['final_acc_cnn']:.2f} | {s['final_acc_nme']:.2f} | {s['wall_seconds'] / 60:.1f} min | "
                     f"{cpu} | {s['attempts']} |")
    return "\n".join(lines) + "\n"


def plot_curves(long_rows, path: Path, setting: Setting, tiny: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("acc_cnn", "LUCIR-CNN"), ("acc_nme", "LUCIR-NME")]
    if _has_old_new(long_rows):
        panels.append(("acc_old_cnn", "LUCIR-CNN on the old classes"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True)
    style = {"ours": ("tab:blue", "ours"), "authors": ("tab:red", "authors' code")}
    for ax, (key, title) in zip(axes, panels):
        for impl, (color, name) in style.items():
            rows = [r for r in long_rows if r["implementation"] == impl]
            for k, run in enumerate(sorted({r["run"] for r in rows})):
                pts = sorted((r["classes_seen"], r[key]) for r in rows if r["run"] == run and r.get(key) is not None)
                if pts:
                    ax.plot(*zip(*pts), color=color, marker="o", ms=3, lw=1.2,
                            ls="-" if k == 0 else "--", label=run)
        ax.set_title(title)
        ax.set_xlabel("number of classes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=8)
    what = "TINY harness check, not comparable" if tiny else (
        f"CIFAR-100 B{setting.base_classes} + {setting.phases} phases, {setting.epochs} epochs/phase")
    fig.suptitle(f"Ours beside the authors' code: {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- timing (projection)
def _workload(setting: Setting) -> dict:
    """Images each side pushes through the network in one run of `setting` (counted from the two
    programs' code): training steps of the base phase and of the incremental phases (new-class images
    plus R_per exemplars per old class), and forward passes in eval mode. The authors' script tests
    the model after every epoch, recomputes the class means of every seen class from all its 500
    training images and their channel-reversed copies after every phase (for its NCM column), and
    computes features for imprinting, herding, the first-group and cumulative accuracies and the
    confusion matrix; ours extracts the new classes for imprinting and herding, and the test images,
    the exemplars and their second view once per phase."""
    b, k, n, e, r = setting.base_classes, setting.per_phase, setting.phases, setting.epochs, 20
    per_cls_train, per_cls_test = 500, 100
    seen = [b + t * k for t in range(n + 1)]
    base_steps = b * per_cls_train * e
    inc_steps = sum((k * per_cls_train + r * seen[t - 1]) * e for t in range(1, n + 1))
    ours_fwd = (b * per_cls_train + n * k * per_cls_train          # herding of the new classes
                + n * k * per_cls_train                            # imprinting
                + sum(c * per_cls_test + 2 * r * c for c in seen))  # test images, exemplars x 2 views
    authors_fwd = (sum(e * c * per_cls_test for c in seen)             # test after every epoch
                   + b * per_cls_train + n * k * per_cls_train         # herding
                   + n * k * per_cls_train                             # imprinting
                   + sum(2 * per_cls_train * c for c in seen)          # class means, all seen classes x 2
                   + sum(b * per_cls_test + 2 * c * per_cls_test for c in seen))  # first group, cumul., confusion
    return {"base_steps": base_steps, "inc_steps": inc_steps, "ours_forward": ours_fwd, "authors_forward": authors_fwd}


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(images: int, tic) -> dict:
    """Images/s over the wall time and over the CPU time of this one-thread process since `tic`: on a
    busy machine the second is the rate the process would have on a core of its own."""
    wall, cpu = time.perf_counter() - tic[0], time.process_time() - tic[1]
    return {"wall": images / wall, "cpu": images / cpu}


def _time_ours(batches: int) -> dict:
    """Images/s of our real base and incremental training steps (lucir.trainer.train_epochs on
    CIFAR-100) and of our evaluation forward pass (lucir.trainer.extract), in this process."""
    import torch
    from lucir import make_config
    from lucir.data import load_dataset
    from lucir.models import build_model, frozen_copy, grow_head
    from lucir.trainer import Stage, extract, train_epochs
    cfg = make_config("lucir", progress=False, device="cpu")
    data = load_dataset(cfg)
    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    bs = cfg.batch_size
    out = {}
    model = build_model("resnet32", 50, True, False).to(memory_format=torch.channels_last)
    idx = torch.nonzero(data.train_labels < 50).flatten()[: (batches + 2) * bs]
    warm_up, base = Stage("warm-up", epochs=1, lr=0.1), Stage("base", epochs=1, lr=0.1)
    train_epochs(model, None, data, idx[: 2 * bs], model.parameters(), warm_up, cfg, dev, gen)
    tic = _clock()
    train_epochs(model, None, data, idx[2 * bs:], model.parameters(), base, cfg, dev, gen)
    out["base_step"] = _rates(batches * bs, tic)
    old = frozen_copy(model)
    params = grow_head(model, 5)
    idx = torch.nonzero(data.train_labels < 55).flatten()[: batches * bs]
    tic = _clock()
    stage = Stage("inc", epochs=1, lr=0.1, n_old=50, lam=5.0 * (50 / 5) ** 0.5)
    train_epochs(model, old, data, idx, params, stage, cfg, dev, gen)
    out["inc_step"] = _rates(batches * bs, tic)
    tic = _clock()
    extract(model, data.test, torch.arange(batches * bs), dev, cfg.eval_batch_size)
    out["forward"] = _rates(batches * bs, tic)
    return out


def authors_optimizer(model, incremental: bool, milestones):
    """SGD and its lr schedule as the authors' script builds them for a phase (lr 0.1, momentum 0.9,
    weight decay 5e-4, lr / 10 at `milestones`); in an incremental phase the old-class embeddings
    (`fc.fc1`) are fixed by lr 0 and no weight decay."""
    import torch
    params = model.parameters()
    if incremental:
        fc1 = list(map(id, model.fc.fc1.parameters()))
        params = [{"params": [p for p in model.parameters() if id(p) not in fc1], "lr": 0.1, "weight_decay": 5e-4},
                  {"params": model.fc.fc1.parameters(), "lr": 0, "weight_decay": 0}]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)


def authors_transforms():
    """The train and test transforms of the authors' script (as it defines them), and torchvision's
    integrity check relaxed as patch 01 does, for loaders built outside the script."""
    import torchvision
    from torchvision import transforms
    torchvision.datasets.cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)  # as patch 01
    norm = transforms.Normalize((0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023))
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    return train_tf, transforms.Compose([transforms.ToTensor(), norm])


def _time_authors(code: Path, data: Path, batches: int) -> dict:
    """Images/s of the authors' own training function (incremental_train_and_eval_MR_LF, patched) in
    its base and incremental branches, and of its compute_features, on CIFAR-100 through torchvision
    (PIL transforms in the process, patch 07), in this process."""
    import copy
    import torch
    import torchvision
    sys.path.insert(0, str(code / SCRIPT.parent))
    import modified_linear
    import modified_resnet_cifar
    from utils_incremental.compute_features import compute_features
    from utils_incremental.incremental_train_and_eval_MR_LF import incremental_train_and_eval_MR_LF
    train_tf, test_tf = authors_transforms()
    bs, n = 128, batches * 128

    def loader(n_classes, count, tf, shuffle, batch):
        ds = torchvision.datasets.CIFAR100(str(data), train=True, download=False, transform=tf)
        keep = np.nonzero(np.asarray(ds.targets) < n_classes)[0][:count]
        ds.data, ds.targets = ds.data[keep], [int(t) for t in np.asarray(ds.targets)[keep]]
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=0)

    test = loader(50, 100, test_tf, False, 100)  # the function tests after its epoch: one small batch
    out = {}
    model = modified_resnet_cifar.resnet32(num_classes=50)

    def run(m, ref, it, count, n_cls, lam):
        opt, sched = authors_optimizer(m, incremental=ref is not None, milestones=[4, 6])
        tl = loader(n_cls, count, train_tf, True, bs)
        tic = _clock()
        incremental_train_and_eval_MR_LF(1, m, ref, opt, sched, tl, test, it, 9, lam, 0.5, 2, 1.0)
        return _rates(count, tic)

    run(model, None, 9, 2 * bs, 50, 5.0)  # warm-up
    out["base_step"] = run(model, None, 9, n, 50, 5.0)
    ref = copy.deepcopy(model)
    new_fc = modified_linear.SplitCosineLinear(64, 50, 5)
    new_fc.fc1.weight.data = model.fc.weight.data
    new_fc.sigma.data = model.fc.sigma.data
    model.fc = new_fc
    out["inc_step"] = run(model, ref, 10, n, 55, 5.0 * (50 / 5) ** 0.5)
    feat = torch.nn.Sequential(*list(model.children())[:-1])
    ev = loader(100, n, test_tf, False, 128)
    tic = _clock()
    compute_features(feat, ev, n, 64)
    out["forward"] = _rates(n, tic)
    return out


def time_steps(code: Path, data: Path, batches: int, setting: Setting, out: Path) -> dict:
    """Each side's rates, measured one after the other in a child process with one torch thread, and
    the projected wall time of one run of `setting` from them (training and forward passes only)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    rates = {}
    for side in ("ours", "authors"):
        r = subprocess.run([sys.executable, __file__, "--_time-side", side, "--work", str(code.parent),
                            "--time-steps", str(batches)], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"timing {side} failed:\n{r.stderr[-3000:]}")
        rates[side] = json.loads(r.stdout.strip().splitlines()[-1])
    w = _workload(setting)
    proj = {}
    for side in ("ours", "authors"):
        s = rates[side]
        proj[side] = {clock: (w["base_steps"] / s["base_step"][clock] + w["inc_steps"] / s["inc_step"][clock]
                              + w[f"{side}_forward"] / s["forward"][clock]) for clock in ("cpu", "wall")}
    result = {"batches": batches, "images_per_s": rates, "workload": w, "projected_seconds_per_run": proj,
              "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", type=Path, help="local checkout of hshustc/CVPR19_Incremental_Learning")
    ap.add_argument("--out", type=Path, default=None, help="tables and figure (default reports/authors_code; "
                                                           "with --tiny WORK/report, outside the repository's reports)")
    ap.add_argument("--work", type=Path, default=None, help="patched code, data and runs (default results/authors_code[_tiny])")
    ap.add_argument("--runs", type=int, default=None, help="runs of each side (default 2; 1 with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a quick check of the harness (not a comparison)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the two processes of a pair to one core each")
    ap.add_argument("--only", choices=["ours", "authors"], help="run one side only")
    ap.add_argument("--report-only", action="store_true", help="only write the tables and figure from finished runs")
    ap.add_argument("--time-steps", type=int, metavar="N", help="instead of running: time N training batches "
                    "of each side at the matched setting and project the comparison's wall time")
    ap.add_argument("--_time-side", choices=["ours", "authors"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._time_side:  # the child process of --time-steps
        import torch
        torch.set_num_threads(1)
        code = args.work.resolve() / "code"
        r = _time_ours(args.time_steps) if args._time_side == "ours" else \
            _time_authors(code, args.work.resolve() / "data", args.time_steps)
        print(json.dumps(r))
        return 0
    setting = TINY if args.tiny else MATCHED
    suffix = "_tiny" if args.tiny else ""
    work = (args.work or REPO / "results" / f"authors_code{suffix}").resolve()
    out = args.out or (work / "report" if args.tiny else REPO / "reports" / "authors_code")
    runs = args.runs or (1 if args.tiny else 2)
    code, data_dir = work / "code", work / "data"
    pairs = make_runs(setting, runs, work, code, data_dir)
    if args.time_steps:
        if args.authors is None:
            ap.error("--time-steps needs --authors PATH")
        prepare_code(args.authors.resolve(), code)
        prepare_data(data_dir)
        t = time_steps(code, data_dir, args.time_steps, MATCHED, out)
        print(json.dumps(t, indent=1))
        proj = t["projected_seconds_per_run"]
        for clock, what in (("cpu", "from CPU time: each process on a core of its own"),
                            ("wall", "from wall time under this machine's load at the time")):
            pair = max(p[clock] for p in proj.values())
            print(f"projected ({what}): ours {proj['ours'][clock] / 3600:.1f} h, authors' "
                  f"{proj['authors'][clock] / 3600:.1f} h a run; {runs} pairs one after another "
                  f"~{runs * pair / 3600:.1f} h (training and forward passes only)")
        return 0
    failures = []
    if not args.report_only:
        if args.only != "ours":
            if args.authors is None:
                ap.error("--authors PATH is needed to run the authors' code (or --only ours / --report-only)")
            names = prepare_code(args.authors.resolve(), code)
            print(f"authors' code patched in {code}: {', '.join(names)}", flush=True)
            prepare_data(data_dir)
        failures = run_pairs(pairs, pin=not args.no_pin, only=args.only)
    write_report(pairs, out, setting, args.tiny)
    print(f"tables and figure: {out}")
    for f in failures:
        print("failed:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
