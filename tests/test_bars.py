"""Progress written to a file is plain lines (no carriage returns, no cursor moves), and a resumed
study run's progress starts from what this call trains, not from a killed process's progress.json."""
import os
import re
import subprocess
import sys

from lucir import local_executor, scheduler
from lucir.bars import LineStream, bar_options

from conftest import TINY, tiny_config


def test_line_stream_turns_redraws_into_lines():
    out = []

    class Sink:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    stream = LineStream(Sink())
    stream.write("\rphase 1:  10%|#   | 1/10   ")
    stream.write("\rphase 1:  20%|##  | 2/10\x1b[A")
    stream.write("\n")
    assert out == ["phase 1:  10%|#   | 1/10\n", "phase 1:  20%|##  | 2/10\n"]


def test_bars_on_a_file_are_plain_and_on_a_terminal_are_left_alone(tmp_path):
    with open(tmp_path / "log", "w") as fh:
        assert isinstance(bar_options(fh)["file"], LineStream)

    class Terminal:
        def isatty(self):
            return True
    assert bar_options(Terminal()) == {}


def test_a_run_logged_to_a_file_has_no_carriage_returns_or_cursor_moves(tmp_path):
    sets = [f"--set={k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    log = tmp_path / "run.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "lucir", "run", "--preset", "lucir", *sets, "--set", "progress=true",
                               "--set", f"cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "run")],
                              stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "LUCIR_PROGRESS_INTERVAL": "0"},
                              timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert any(line.startswith("phase 0") and "100%" in line for line in lines), text
    assert any(line.startswith("phase 2") and "100%" in line for line in lines), text
    # each epoch's line holds its figures whole, the training accuracy last (a bar cut to a width lost it)
    epochs = [line for line in lines if line.startswith("phase ") and "ce=" in line]
    assert epochs and all(re.search(r", train_acc=\d\.\d{3}\]$", line) for line in epochs), text


def test_a_stale_progress_file_is_dropped_before_a_run_resumes(tmp_path, monkeypatch):
    """A worker killed in phase 7 epoch 29 leaves progress.json saying so; the next call may
    restart that phase at epoch 0 (no epoch checkpoint), so the file must not outlive it."""
    from lucir import trainer
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / scheduler.PROGRESS_FILE).write_text('{"phase": "phase 7 (80+5 classes)", "epoch": 29, "epochs": 160}')
    seen = {}

    def fake_run(config, out, on_epoch=None):
        seen["stale"] = (folder / scheduler.PROGRESS_FILE).exists()
        on_epoch("phase 7 (80+5 classes)", 1, 160)
        seen["fresh"] = (folder / scheduler.PROGRESS_FILE).read_text()
        return {}

    monkeypatch.setattr(trainer, "run_incremental", fake_run)
    task = scheduler.RunTask("r", str(folder), tiny_config("lucir", tmp_path / "cache"))
    result = local_executor.execute_run(task, local_executor.Slot(0, "cpu", 1))
    assert result["status"] == "done", result
    assert seen["stale"] is False and '"epoch": 1' in seen["fresh"]
