"""Tidy outputs of a run, written atomically and read back: config.json, metrics.json,
metrics.csv (long format), confusion matrices, weight norms and per-phase checkpoints."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Config, ConfigError, config_from_dict, one_line, upgrade

try:
    import fcntl
except ImportError:  # not POSIX: `locked` locks nothing
    fcntl = None

# Fields that change how a run is executed, not what it computes.
# `deterministic` is one of them: on the CPU it changes no number, and on a GPU it picks, among the
# roundings a run of the config may take from one repetition to the next, one that repeats (as
# `device` picks the rounding of its hardware); the run computes the same thing either way.
RUNTIME_FIELDS = ("device", "progress", "cache_base", "cache_dir", "data_dir", "eval_batch_size", "workers",
                  "checkpoint_every", "deterministic", "dist_timeout_minutes")
# Fields added after results existed, with the value that computes what runs did before them: a
# run's name leaves them out while they hold that value, so earlier runs keep their folders.
NEUTRAL_FIELDS = {"amp": "off", "compile": False, "class_order_run": 0, "compile_mode": "default", "fused_sgd": False}


def run_identity(config: Config) -> dict:
    """The config fields that name a run: all but the runtime ones and neutral new ones."""
    return {k: v for k, v in config.to_dict().items()
            if k not in RUNTIME_FIELDS and not (k in NEUTRAL_FIELDS and v == NEUTRAL_FIELDS[k])}


class Locked(RuntimeError):
    """A lock taken without waiting is held by another process."""


@contextlib.contextmanager
def locked(path: Path, wait: bool = True):
    """An exclusive lock (fcntl.flock) on the file `path`, created if missing, held inside the
    `with`. Processes that share a results or cache folder take turns; on a system without
    fcntl it locks nothing. With wait=False a lock held by another process raises Locked, naming
    the holder (pid and host, read from /proc/locks; the lock file itself is never written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except OSError as e:
        raise write_error(path, e) from None
    with fh:
        if fcntl:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked(f"'{path}' is held by {lock_holder(fh)}") from None
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(fh, fcntl.LOCK_UN)


class WriteError(RuntimeError):
    """A file could not be written (disk full, read-only folder, no permission): one line naming
    the file and the system's reason. Files written before it are complete (atomic_write), so the
    same command goes on once the cause is removed."""


def write_error(path, e: OSError) -> WriteError:
    reason = e.strerror or str(e)
    return WriteError(f"cannot write '{path}': {reason}; free space or make the folder writable "
                      f"(or choose another folder), then run the same command again")


def lock_holder(fh) -> str:
    """Who holds the flock on the open file `fh`: "pid N on host H" from /proc/locks (Linux), or
    "another process" where that cannot be read (another host sharing the folder over NFS)."""
    st = os.fstat(fh.fileno())
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" not in fields and len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                return f"pid {fields[4]} on host {socket.gethostname()}"
    except OSError:
        pass
    return "another process"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename into place: a file that exists is complete. An OSError on
    the way (the folder, the temporary file, the rename) is a WriteError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    """Strict JSON: NaN (an accuracy over no samples) is written as null."""
    text = json.dumps(_nan_to_none(obj), indent=2, default=_jsonable, allow_nan=False)
    atomic_write(path, lambda p: Path(p).write_text(text))


def _nan_to_none(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (tuple, np.ndarray)):
        return list(v)
    raise TypeError(f"not JSON serialisable: {type(v)}")


def prepare_out_dir(out_dir: Path, config: Config) -> None:
    """Write config.json, or check that the one there describes the same run (check_out_dir)."""
    if check_out_dir(out_dir, config):
        write_json(Path(out_dir) / "config.json", config.to_dict())


def check_out_dir(out_dir: Path, config: Config) -> bool:
    """Whether config.json is to be written; a ConfigError when the one there describes another
    run. Reads only. Runtime fields (RUNTIME_FIELDS) may differ. A complete run's config.json is
    never rewritten: loading a run leaves it as it was trained; an unfinished run records the
    runtime fields of whoever goes on with it."""
    path = Path(out_dir) / "config.json"
    if not path.exists():
        return True
    current = config.to_dict()
    written = read_config_json(path)
    stored = {**Config().to_dict(), **upgrade(written)}  # a field added after the run was written has its default there
    diff = sorted(k for k in set(stored) | set(current) if k not in RUNTIME_FIELDS and stored.get(k) != current.get(k))
    if diff:
        raise ConfigError(f"'{out_dir}' holds a run with a different config (fields differ: "
                          f"{', '.join(diff)}); use another --out")
    return not (is_complete(out_dir) or json.loads(json.dumps(current, default=_jsonable)) == written)


def read_config_json(path: Path) -> dict:
    """A run's config.json, or a ConfigError naming it when it cannot be read. It is written
    atomically, so one that is cut short or garbled was damaged afterwards; deleting it is safe,
    as the same command writes it again from its own config."""
    try:
        written = json.loads(Path(path).read_text())
        if not isinstance(written, dict):
            raise ValueError("not a JSON object")
        return written
    except (OSError, ValueError) as e:
        raise ConfigError(f"'{path}' cannot be read ({type(e).__name__}: {one_line(str(e), 120)}); delete it and "
                          f"run the same command again, which writes it anew") from None


def load_config(out_dir) -> Config:
    return config_from_dict(json.loads((Path(out_dir) / "config.json").read_text()))


def load_metrics(out_dir) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())


CLOCK_FIELDS = ("train_seconds", "wall_seconds_this_call")  # of a run; each phase has its "seconds"


def without_clocks(metrics: dict) -> dict:
    """metrics.json less its wall-clock fields: what two runs of one config share when they are the
    same computation (the machine's speed and load set only the clocks)."""
    out = {k: v for k, v in metrics.items() if k not in CLOCK_FIELDS}
    out["phases"] = [{k: v for k, v in p.items() if k != "seconds"} for p in metrics["phases"]]
    return out


def phases_done(out_dir) -> int:
    """How many phases a run folder's metrics.json records as finished (0 without a readable one)."""
    try:
        return len(load_metrics(out_dir)["phases"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def is_complete(out_dir) -> bool:
    """metrics.json says complete and the final phase's checkpoint it vouches for is there."""
    return _says_complete(out_dir) and missing_final_checkpoint(out_dir) is None


def _says_complete(out_dir) -> bool:
    path = Path(out_dir) / "metrics.json"
    try:
        return bool(json.loads(path.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def missing_final_checkpoint(out_dir) -> Path | None:
    """The final phase checkpoint of a folder whose metrics.json says complete, when it is missing
    (deleted, or a run written before the checkpoint came first); None otherwise."""
    try:
        phases = json.loads((Path(out_dir) / "metrics.json").read_text())["phases"]
        path = checkpoint_path(out_dir, int(phases[-1]["phase"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return None if path.exists() else path


def check_final_checkpoint(out_dir) -> None:
    """A ConfigError when metrics.json says complete but the final weights are missing."""
    if _says_complete(out_dir) and (path := missing_final_checkpoint(out_dir)) is not None:
        raise CheckpointError(f"'{Path(out_dir) / 'metrics.json'}' says the run is complete but its final checkpoint "
                              f"'{path}' is missing; delete metrics.json to train the last phase again")


def metrics_long(metrics: dict) -> pd.DataFrame:
    """One row per phase, classifier and metric (the long format of metrics.csv)."""
    rows = []
    for p in metrics["phases"]:
        for clf in ("cnn", "nme"):
            for metric in ("acc", "acc_old", "acc_new"):
                value = p.get(f"{metric}_{clf}")
                rows.append({"phase": p["phase"], "classes_seen": p["classes_seen"], "classifier": clf,
                             "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["phase", "classes_seen", "classifier", "metric", "value"])


def write_metrics(out_dir: Path, metrics: dict) -> None:
    write_json(Path(out_dir) / "metrics.json", metrics)
    atomic_write(Path(out_dir) / "metrics.csv", lambda p: metrics_long(metrics).to_csv(p, index=False))


def save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    atomic_write(path, write)


def save_npz(path: Path, **arrays) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(path, write)


def checkpoint_path(out_dir, phase: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"phase_{phase}.pt"


def save_checkpoint(out_dir, phase: int, state: dict) -> None:
    save_state(checkpoint_path(out_dir, phase), state)


def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_bytes(state_bytes(state)))


def state_bytes(state) -> bytes:
    """torch.save's file as bytes, so that writing it raises the system's OSError (torch's own
    writer reports a full disk as "file write failed", without the reason)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class CheckpointError(ConfigError):
    """A checkpoint in a run folder cannot be read; like a config mismatch, the folder needs a look."""


def latest_checkpoint(out_dir) -> dict | None:
    """The state of the last checkpointed phase, or None to start from the beginning. Checkpoints
    are written atomically, so one that cannot be read was damaged afterwards: an error naming it,
    not a silent retrain. They hold only tensors, numbers, strings, lists and dicts (weights_only)."""
    folder = Path(out_dir) / "checkpoints"
    phases = sorted((int(p.stem.split("_")[1]) for p in folder.glob("phase_*.pt")), reverse=True)
    if not phases:
        return None
    return load_state(checkpoint_path(out_dir, phases[0]), f"phase {phases[0]}")


def epoch_checkpoint_path(out_dir) -> Path:
    """The one epoch checkpoint of a run folder: the newest state inside the phase in progress."""
    return Path(out_dir) / "checkpoints" / "epoch.pt"


def load_state(path: Path, what: str) -> dict | None:
    """A checkpoint written by torch.save (atomically), or None when there is none. One that exists
    but cannot be read was damaged after it was written: an error naming it, not a silent retrain."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a damaged file)
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: "
                              f"{first_sentence(e)}); delete it to train {what} again") from None


def epoch_state(out_dir, config: Config, partial: Path | None = None) -> dict | None:
    """{"phase", "stage", "epoch", "epochs"} of the run folder's epoch checkpoint or, without one, of
    `partial` (a base phase trained for the cache keeps its own beside the cache file); None
    without either."""
    path = epoch_checkpoint_path(out_dir)
    if not path.exists() and partial is not None:
        path = Path(partial)
    state = load_state(path, "the phase under way")
    if state is None:
        return None
    if state["stage"] == "cbf":
        epochs = config.cbf_epochs
    else:
        epochs = (config.base_epochs or config.epochs) if state["phase"] == 0 else config.epochs
    return {"phase": int(state["phase"]), "stage": state["stage"], "epoch": int(state["epoch"]), "epochs": epochs}


def describe_state(out_dir, config: Config, partial: Path | None = None) -> str:
    """Where a run folder stands: complete, under way (phase and epoch), or not started."""
    if is_complete(out_dir):
        return "complete"
    state = epoch_state(out_dir, config, partial)
    phases = phases_done(out_dir)
    if state:
        stage = " (class-balanced finetune)" if state["stage"] == "cbf" else ""
        return (f"under way: phase {state['phase']} of {config.phases}{stage}, "
                f"epoch {state['epoch']}/{state['epochs']}")
    return f"under way: {phases} of {config.phases + 1} phases done" if phases else "not started"


def first_sentence(error, limit: int = 200) -> str:
    """The first line of an error's message, shortened at a sentence or word end (never mid-word)
    when longer than `limit`: torch's messages for a damaged file run to many paragraphs."""
    lines = str(error).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[:end + 1] if end > 0 else text[:text.rfind(" ", 0, limit)] + " ..."


def load_run(out_dir) -> dict:
    """Everything a notebook needs from one finished run: config, metrics, long table."""
    out_dir = Path(out_dir)
    metrics = load_metrics(out_dir)
    return {"config": json.loads((out_dir / "config.json").read_text()), "metrics": metrics,
            "table": pd.read_csv(out_dir / "metrics.csv")}


def run_lock(folder: Path, wait: bool = True):
    """An exclusive lock on a run folder (a file beside it), so that notebooks and the study's
    workers running side by side never train one run twice: the second waits, then loads. With
    wait=False (`python -m lucir run`) the second raises results.Locked, naming the holder."""
    folder = Path(folder).resolve()
    return locked(folder.parent / f".{folder.name}.lock", wait=wait)
