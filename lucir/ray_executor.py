"""The study's Ray executor: each run a Ray task asking for its CPUs and 1/K of a GPU.

No shared filesystem is assumed: the task trains into a temporary folder on its node and sends the
run folder's files, as they are written (only the newest phase checkpoint), to an actor on the
driver's node (`RunFiles`); the driver writes them into results_dir/runs/<name>/ at every poll. A
task whose worker or node dies is started again by Ray and resumes from those files. The
base-phase cache is per node: a trained base phase travels through Ray's object store, and one
being trained travels back to the driver's cache with the run's files.

The worker body is the local executor's `execute_run`, so the numbers are those of a run by hand
with the same threads. A thread of the driver follows the tasks: it writes what they sent, then
completes the Future of each task that ended.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from . import results as res
from .config import one_line
from .device import environment
from .local_executor import Slot, cpu_threads, execute_run
from .scheduler import ExecutorError, RunExecutor, RunTask, base_phase_file


BASE_MODEL, BASE_PARTIAL = "@base/model.pt", "@base/partial.pt"  # a run's base-phase files among its files


def base_files(base: Path) -> dict:
    """{name among a run's files: path} of a base-phase cache file and of the epoch checkpoint
    that a base phase trained for the cache keeps beside it."""
    from .trainer import base_partial_path
    return {BASE_MODEL: Path(base), BASE_PARTIAL: base_partial_path(Path(base))}


def run_in_temporary_folder(task: RunTask, files: dict, device: str, threads: int, store,
                            base: bytes | None = None, sync_seconds: float = 1.0) -> dict:
    """A Ray task's body, on whichever node it lands: write the run folder's files (those the driver
    shipped, then the newer ones the `store` actor holds from an earlier attempt of this task),
    train there, and hand every file to the store as it is written (FileSync threads), so that
    the driver keeps what was trained even if this node dies.

    A run that shares a base phase uses a cache folder of its own: `base`, the trained base phase
    (Ray's object store brings it to this node), goes there before training; a base phase trained
    here, and its epoch checkpoint while it trains, go to the store like the run's files, and the
    driver puts them into its cache, where the runs waiting for that base find them. No node needs
    another node's disk."""
    import ray
    with tempfile.TemporaryDirectory(prefix="lucir-run-") as tmp:
        folder = Path(tmp) / task.name
        config = task.config
        names = {}
        if task.base is not None:
            config = replace(config, cache_dir=str(Path(tmp) / "cache"))
            paths = base_files(base_phase_file(config))
            names = {path.name: name for name, path in paths.items()}
            if base is not None:
                files = {**files, BASE_MODEL: base}
        files = {**files, **ray.get(store.files.remote(task.name))}
        for rel, data in files.items():
            path = paths[rel] if rel in (BASE_MODEL, BASE_PARTIAL) else folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        send = lambda changes: ray.get(store.put.remote(task.name, changes))  # noqa: E731
        syncs = [FileSync(folder, send, sync_seconds)]
        if names:
            syncs.append(FileSync(paths[BASE_MODEL].parent, send, sync_seconds, names.get))
        try:
            result = execute_run(replace(task, folder=str(folder), config=config), Slot(0, device, threads))
        finally:
            for sync in syncs:
                sync.stop()  # the last changes reach the store before the task returns
    return result


class FileSync:
    """A thread that hands the files of a run folder to `send({relative path: bytes, or None for a
    file removed})` as they change, every `seconds` and once more at stop(): every file but the
    phase checkpoints older than the newest (only the newest is needed to resume). With `rename`,
    only the files it names (rename(relative path) -> the name to send, or None) are sent."""

    def __init__(self, folder: Path, send, seconds: float, rename=None):
        self.folder, self.send, self.seconds = Path(folder), send, seconds
        self.rename = rename or (lambda rel: rel)
        self.seen = self._state()  # what the folder holds now came from the driver: not sent back
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _state(self) -> dict:
        state = {}
        for rel in folder_files(self.folder, read=False):
            try:
                st = (self.folder / rel).stat()
            except FileNotFoundError:  # replaced or removed meanwhile: the next pass sees it
                continue
            state[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return state

    def _changes(self) -> None:
        now = {rel: key for rel, key in self._state().items() if self.rename(rel) is not None}
        changes = {}
        for rel, key in list(now.items()):
            if self.seen.get(rel) != key:
                try:
                    changes[self.rename(rel)] = (self.folder / rel).read_bytes()
                except FileNotFoundError:
                    now.pop(rel)
        changes |= {self.rename(rel): None for rel in self.seen
                    if rel not in now and not rel.startswith("checkpoints/phase_")}
        if changes:
            self.send(changes)
        self.seen = now

    def _loop(self) -> None:
        while not self.done.wait(self.seconds):
            self._changes()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._changes()


def folder_files(folder: Path, read: bool = True) -> dict:
    """The files a run needs to resume elsewhere ({relative path: bytes}, or the paths alone
    without `read`): all but the phase checkpoints before the newest one."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    checkpoints = sorted(folder.glob("checkpoints/phase_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    skip = set(checkpoints[:-1])
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in skip and not p.name.startswith(".")]
    return {str(p.relative_to(folder)): (p.read_bytes() if read else None) for p in paths}


def write_run_files(folder: Path, files: dict, base: str | None = None) -> None:
    """Files of a Ray task into the run folder ({relative path: bytes, or None: remove it}), its
    base-phase files into the cache file `base`, in the trainer's order: every file first,
    metrics.json last of them (a run is complete only once everything else is in place), then the
    removals (the epoch checkpoint goes only once the phase checkpoint that replaces it is there;
    a task's changes gathered over several syncs can list a removal first)."""
    folder = Path(folder)
    paths = base_files(base) if base is not None else {}
    for rel in sorted(files, key=lambda r: (files[r] is None, r == "metrics.json")):
        data, path = files[rel], paths.get(rel, folder / rel)
        if rel in (BASE_MODEL, BASE_PARTIAL) and base is None:
            continue
        if data is None:
            path.unlink(missing_ok=True)
        else:
            res.atomic_write(path, lambda p, d=data: Path(p).write_bytes(d))


class RunFiles:
    """A Ray actor on the driver's node holding what running tasks wrote: `pending`, the changes
    the driver has not yet written into the results folder, and `latest`, the newest files of
    each run, for a task that Ray starts again after its worker or node died. Only a run's newest
    phase checkpoint is kept."""

    def __init__(self):
        self.pending: dict = {}
        self.latest: dict = {}

    def put(self, run: str, changes: dict) -> None:
        latest = self.latest.setdefault(run, {})
        for rel, data in changes.items():
            if rel.startswith("checkpoints/phase_") and data is not None:
                for old in [r for r in latest if r.startswith("checkpoints/phase_")]:
                    del latest[old]
            if data is None:
                latest.pop(rel, None)
            else:
                latest[rel] = data
            self.pending.setdefault(run, {})[rel] = data

    def take(self) -> dict:
        out, self.pending = self.pending, {}
        return out

    def files(self, run: str) -> dict:
        return dict(self.latest.get(run, {}))

    def forget(self, run: str) -> None:
        self.latest.pop(run, None)


# How long joining a cluster may wait for its address to answer: ray.init itself retries an
# unreachable or silent address for ever, printing a timeout line every 35 s.
RAY_CONNECT_TIMEOUT_S = 60
# How long a driver may take to join there once a gRPC server answers: Ray's own wait for a head's
# raylet is 30 s, and a loaded machine is slower.
RAY_JOIN_TIMEOUT_S = 120
# What an HTTP/2 client sends first (its preface and an empty SETTINGS frame). Ray's GCS and its
# client server speak gRPC, so they answer with a SETTINGS frame (type 4, the frame's 4th byte).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def first_frame_header(conn: socket.socket, deadline: float) -> bytes:
    """The first 9 bytes (a frame's header) a server sends once it has an HTTP/2 client's preface,
    or fewer where it closes the connection; socket.timeout at `deadline` (time.monotonic)."""
    conn.sendall(HTTP2_PREFACE)
    head = b""
    while len(head) < 9:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(9 - len(head))
        if not chunk:
            break
        head += chunk
    return head


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """An ExecutorError, within `timeout` seconds, unless a gRPC server (as Ray's is) answers at
    the host and port of a Ray address (host:port, ray://host:port; a bare host means Ray's port
    6379): nothing listening, a port that accepts and stays silent, or one that answers another
    protocol. "auto" and "local" are left to ray.init; with Ray's TLS on (RAY_USE_TLS), only the
    connection is checked."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "6379"
    deadline = time.monotonic() + timeout
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    head, connected = b"", False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            connected = True
            head = b"" if tls else first_frame_header(conn, deadline)
        reason = None if tls or (len(head) == 9 and head[3] == 4) else "it answered, but not as a Ray cluster does"
    except socket.timeout:
        reason = "it accepted the connection but said nothing" if connected else "timed out"
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
    if reason:
        raise ExecutorError(f"no Ray cluster answers at --address {address} ({reason}, waited at most "
                            f"{timeout:.0f} s); start one there (ray start --head) or give the address of a live one")


# What Ray's core prints while a cluster refuses a driver's token: since Ray 2.5x, `ray start
# --head` turns token authentication on wherever a token exists (~/.ray/auth_token), and a driver
# given an explicit address sends the token only under RAY_AUTH_MODE=token; ray.init itself
# raises only "Failed to connect".
REFUSED_TOKEN = ("InvalidAuthToken", "Unauthenticated")
JOIN = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"


def join_cluster(ray, address: str, timeout: float = RAY_JOIN_TIMEOUT_S) -> None:
    """ray.init at `address`, once a driver in a child process has joined there and left within
    `timeout` seconds (`try_join`)."""
    try_join(address, timeout)
    ray.init(address=address, log_to_driver=False)


def try_join(address: str, timeout: float = RAY_JOIN_TIMEOUT_S) -> None:
    """A driver in a child process joins the cluster at `address` and leaves, within `timeout`
    seconds: ray.init waits for ever on a server that speaks gRPC but is not a Ray cluster, and a
    child can be stopped. Where it did not join, an ExecutorError in one line (a refused token says
    what to set)."""
    try:
        child = subprocess.run([sys.executable, "-c", JOIN, address], capture_output=True, text=True,
                               timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"no Ray cluster answers at --address {address} (a server there speaks gRPC, but no "
                            f"Ray driver could join it within {timeout:.0f} s); start one there (ray start --head) "
                            "or give the address of a live one") from None
    if child.returncode != 0:
        if any(word in child.stderr for word in REFUSED_TOKEN):
            raise ExecutorError(f"the Ray cluster at --address {address} refused this driver's token; it runs with "
                                "token authentication: set RAY_AUTH_MODE=token, with the head's token in "
                                "RAY_AUTH_TOKEN or ~/.ray/auth_token (see `ray get-auth-token`)")
        last = child.stderr.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise ExecutorError(f"Ray could not join the cluster at --address {address}: {one_line(last[0], 300)}")


class RayExecutor(RunExecutor):
    """Each run a Ray task asking for `cpus_per_run` CPUs and, where the cluster has GPUs and the
    device is not cpu, 1/runs_per_gpu of a GPU. Without `address`, ray.init() starts a small local
    cluster (every core of this machine); with one, it joins that cluster. progress.json reaches
    the driver's folder with the other files."""
    name = "ray"
    poll = 1.0  # seconds between two writes of what the tasks sent

    def __init__(self, address: str | None = None, device: str | None = None, runs_per_gpu: int = 1,
                 cpus_per_run: int = 1, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise ExecutorError('--executor ray needs Ray: pip install -e ".[ray]"') from None
        self.ray = ray
        if address:
            check_reachable(address)
        for attempt in range(3):  # a busy machine can miss Ray's fixed 30 s wait for a local raylet
            try:
                if address:
                    join_cluster(ray, address)
                else:  # a busy machine can take over Ray's default 30 s to start the local raylet
                    # An environment variable of this process while ray.init runs: it waits for the
                    # raylet here (Ray's C++ GlobalStateAccessor::GetNode), whose Ray config reads
                    # RAY_<name> from the environment when it is first used; ray.init has no argument
                    # for it, and its _system_config reaches only the cluster's processes.
                    with environment(RAY_raylet_start_wait_time_s="120"):
                        ray.init(num_cpus=num_cpus or cpu_threads(), include_dashboard=False, log_to_driver=False)
                break
            except ExecutorError:
                raise
            except Exception as e:  # noqa: BLE001  (Ray raises plain Exception for a slow start)
                ray.shutdown()
                if address or attempt == 2:
                    raise ExecutorError(f"Ray could not start or join the cluster: "
                                        f"{one_line(str(e), 300)}") from None
        resources = ray.cluster_resources()
        gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))
        self.cpus_per_run = cpus_per_run
        self.num_gpus = 1.0 / runs_per_gpu if gpus else 0
        self.device = "cuda" if gpus else "cpu"
        self.slots = gpus * runs_per_gpu if gpus else max(1, int(resources.get("CPU", 1)) // cpus_per_run)
        self.remote = ray.remote(run_in_temporary_folder)
        # on the driver's node, so that what the tasks send survives the loss of any other node
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.store = ray.remote(RunFiles).options(num_cpus=0, scheduling_strategy=here).remote()
        self.tasks: dict = {}  # run name -> its task
        self.bases: dict = {}  # base-phase cache file -> its bytes in the object store
        self.runs: dict = {}  # object ref -> (task, its future), until the task ends
        self.start_following("ray-tasks")

    @property
    def capacity(self) -> int:
        return self.slots

    def describe(self) -> str:
        per_run = f"{self.cpus_per_run} CPU(s)" + (f" and {self.num_gpus:g} GPU" if self.num_gpus else "")
        return f"executor ray: up to {self.slots} run(s) at once, each asking for {per_run}"

    def submit(self, task: RunTask) -> Future:
        files, base = folder_files(Path(task.folder)), None
        if task.base is not None:
            model, partial = base_files(task.base).values()
            if model.exists():  # into the object store once, to every node that runs on it
                if task.base not in self.bases:
                    self.bases[task.base] = self.ray.put(model.read_bytes())
                base = self.bases[task.base]
            elif partial.exists():  # a base phase that an earlier attempt left half-trained
                files[BASE_PARTIAL] = partial.read_bytes()
        # max_retries: Ray starts the task again when its worker process or node dies; it then
        # resumes from the files the store holds
        future = Future()
        with self.admitting():
            ref = self.remote.options(num_cpus=self.cpus_per_run, num_gpus=self.num_gpus, max_retries=3).remote(
                task, files, self.device, self.cpus_per_run, self.store, base)
            self.tasks[task.name] = task
            self.runs[ref] = (task, future)
        return future

    def _sync(self) -> None:
        """Write what the tasks sent since the last call into the runs' folders, and the base
        phases they trained into the cache, where the runs that wait for them find them."""
        for run, changes in self.ray.get(self.store.take.remote()).items():
            write_run_files(Path(self.tasks[run].folder), changes, self.tasks[run].base)

    def under_way(self) -> list[tuple[str, RunTask]]:
        return [(f"ray task {k}", task) for k, (task, _) in enumerate(list(self.runs.values()))]

    def _follow(self) -> None:
        """The driver's thread: when a task ends, or every `poll` seconds, write what the tasks
        sent into the runs' folders (_sync), then complete the futures of the tasks that ended
        (their last files are in the store once they end). An error here (the cluster gone, the
        results folder not writable) ends the futures under way and every later submit."""
        try:
            while not self.stopping.is_set():
                refs = list(self.runs)
                if not refs:
                    self.stopping.wait(self.poll)
                    continue
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=self.poll)
                self._sync()
                for ref in ready:
                    task, future = self.runs.pop(ref)
                    try:
                        future.set_result(self.ray.get(ref))
                    except Exception as e:  # noqa: BLE001  (the task or its node died more often than Ray retries)
                        future.set_exception(e)
                    self.store.forget.remote(task.name)  # after: were the store gone, this run is ended
        except Exception as e:  # noqa: BLE001
            self.end_following(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Tasks still under way are cancelled: their runs resume from their files another time."""
        self.stop_following()
        for ref, (_, future) in list(self.runs.items()):
            self.ray.cancel(ref, force=True)
            future.cancel()
        self.ray.shutdown()
