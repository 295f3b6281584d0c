"""The study's progress bar: one bar over the work of every run still to do and of the notebooks
and the report after them, its ETA from the cost model (`lucir.scheduler.run_cost`), and below it
a line per run under way."""
from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

from . import bars
from . import results as res
from .scheduler import PROGRESS_FILE, RunTask, costs_with_shared_bases

# The work (in image-epochs) that loading the data and starting a kernel costs, for the progress bar.
NOTEBOOK_OVERHEAD = 3000.0


class Progress:
    """One bar over the work of every run still to do and of the notebooks and report after them,
    with its ETA from run_cost; below it a line per run under way. A thread follows the runs'
    metrics.json (written after each phase) and progress.json (each epoch; every executor brings it
    into the results folder)."""

    def __init__(self, tasks: list[RunTask], notebooks: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm
        self.tqdm, self.enabled, self.desc = tqdm, enabled, desc
        self.tracked = [(Path(t.folder), costs, res.phases_done(t.folder))
                        for t, costs in zip(tasks, costs_with_shared_bases(tasks))]
        self.total = sum(sum(c[k0:]) for _, c, k0 in self.tracked) + NOTEBOOK_OVERHEAD * (notebooks + 1)
        self.notebooks_done, self.lock, self.stop = 0, threading.Lock(), threading.Event()
        self.found_at: dict = {}  # (folder, phase) -> share of the phase trained before this invocation
        # on a file or pipe: plain lines (lucir.bars), each with the workers' states in its postfix
        self.plain = bars.plain(sys.stderr)
        self.bar = tqdm(total=max(self.total, 1.0), desc=desc, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}",
                        **{"dynamic_ncols": True, "file": sys.stderr, **bars.bar_options(sys.stderr)})
        self.postfix = ""
        self.lines: list = []
        self.busy: list = []
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def work_done(self) -> float:
        """Finished phases, plus the epochs trained so far in a phase under way: a phase of a long
        run (the paper's base phase: hours) would otherwise hold the bar and its ETA still."""
        done = 0.0
        for f, c, k0 in self.tracked:
            k = max(k0, res.phases_done(f))
            done += sum(c[j] * (1.0 - self.found_at.get((f, j), 0.0)) for j in range(k0, k))
            done += c[k] * self._share_of_phase(f, k, k == k0) if k < len(c) else 0.0
        return min(done + NOTEBOOK_OVERHEAD * self.notebooks_done, self.work_to_do())

    def work_to_do(self) -> float:
        """The bar's total: all phases not finished before this invocation, less the epochs of a
        resumed phase that an earlier invocation trained (neither this one's work nor still to do)."""
        costs = {f: c for f, c, _ in self.tracked}
        return self.total - sum(costs[f][phase] * share for (f, phase), share in self.found_at.items())

    def _share_of_phase(self, folder: Path, phase: int, resumed: bool) -> float:
        """The share of `phase` that this invocation has trained, from the run's progress.json. A
        phase this invocation started in (`resumed`: it may go on from an epoch checkpoint) counts
        from where this invocation found it (less the epoch that told it), so that epochs of an
        earlier invocation do not make the ETA too short."""
        try:
            p = json.loads((folder / PROGRESS_FILE).read_text())
            stage = re.match(r"phase (\d+)( CBF)?", p["phase"])
            share = 1.0 if stage[2] else p["epoch"] / p["epochs"]  # the CBF finetune: training is done
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0
        if int(stage[1]) != phase:
            return 0.0
        if (folder, phase) not in self.found_at:
            self.found_at[(folder, phase)] = max(share - 1 / p["epochs"], 0.0) if resumed and not stage[2] else 0.0
        return max(share - self.found_at[(folder, phase)], 0.0)

    @staticmethod
    def worker_text(where: str, task: RunTask, epochs: bool) -> str:
        text = f"  {where}: {task.name} {task.label}"
        if not epochs:
            return f"{text}: running"
        try:
            p = json.loads((Path(task.folder) / PROGRESS_FILE).read_text())
            return f"{text}: {p['phase']}, epoch {p['epoch']}/{p['epochs']}"
        except (OSError, ValueError, KeyError):
            return f"{text}: starting"

    def set_busy(self, busy: list[tuple[str, RunTask]], epochs: bool) -> None:
        with self.lock:
            self.busy = [(where, task, epochs) for where, task in busy]

    def update(self, postfix: str | None = None) -> None:
        with self.lock:
            if postfix is not None:
                self.postfix = postfix
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.n = self.work_done()
            self.bar.total = max(self.work_to_do(), 1.0)
            if self.plain:  # one line now and then (tqdm's mininterval), the workers' states in it
                states = "; ".join(self.worker_text(*b).strip() for b in self.busy)
                self.bar.set_postfix_str("; ".join(x for x in (self.postfix, states) if x), refresh=False)
                self.bar.update(0)
                return
            self.bar.refresh()
            if not self.enabled:
                return
            while len(self.lines) < len(self.busy):
                self.lines.append(self.tqdm(total=0, position=len(self.lines) + 1, bar_format="{desc}",
                                            file=sys.stderr, dynamic_ncols=True, leave=False))
            for k, line in enumerate(self.lines):
                text = self.worker_text(*self.busy[k]) if k < len(self.busy) else ""
                line.set_description_str(text, refresh=True)

    def notebook_finished(self) -> None:
        self.notebooks_done += 1
        self.update()

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def _watch(self) -> None:
        while not self.stop.wait(2.0):
            self.update()

    def close(self) -> None:
        self.stop.set()
        self.busy = []
        self.update()
        for line in self.lines:
            line.close()
        self.bar.close()
