"""Carry a study's data to a machine that has no copy of it, in parts that each fit one command.

The GPU machine this project borrows takes, with each command, a copy of the work tree plus the
ignored paths a command names, at most 64 MiB in all, and keeps files between commands for a
short while. CIFAR-100 is 134 MiB even compressed, so it goes in parts (docs/gpu.md, "Carrying
the data"):

    python -m lucir.carry pack --out .carry [--cache-dir DIR]     # here: .carry/part-KK-of-NN.bin + manifest.json
    python -m lucir.carry receive .carry --store /tmp/lucir-carry # there, once per part carried
    python -m lucir.carry unpack --store /tmp/lucir-carry --to /tmp/lucir-data

`pack` writes one tar stream (the data folders with their SHA256SUMS, and the base-phase cache
files where some exist) cut into parts sized so that the work tree, the manifest and one part
stay under the limit with a margin; `manifest.json` holds every part's sha256. `receive` checks
the parts it finds against the manifest and moves them into the store, outside the work tree.
`unpack` checks that every part is there and whole, joins and extracts them, then checks every
data file against its folder's SHA256SUMS. Each failure is one line naming the part or file.

A long run's newest state goes into the repository at each stop the same way, as one tar
(docs/resume.md): `python -m lucir.carry snapshot --root ~/paper_fig9 --out runs_in_progress/X.tar
results/runs/<name>` takes what a resume reads, checks its epoch checkpoint and says where it stands.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from . import provenance
from . import results as res

MIB = 1 << 20
LIMIT_MIB = 64      # what one command may carry: the work tree and the named ignored paths
MARGIN_MIB = 6      # left free: files added to the work tree after packing, the copy's own overhead
DATA_FOLDERS = ("cifar100",)  # what a CIFAR-100 campaign reads (lucir.data.DATA_FOLDERS)


class CarryError(RuntimeError):
    """A missing, corrupt or oversized part; the message names it and what to do."""


def work_tree_bytes(repo: Path) -> int:
    """Bytes of what the device tool copies with every command: tracked files and untracked files
    git does not ignore (the ignored ones travel only when named)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        path = repo / os.fsdecode(name)
        if path.is_file():
            total += path.stat().st_size
    return total


def profile_base_phases(profiles: list[str], data_root: Path, cache_dir: Path) -> dict[Path, str]:
    """{cached file: the name it has on a machine with the same data anywhere} for the base phases
    that the runs of `profiles` share and that are cached already. A file cached under the old
    key (the data folder's path, lucir.trainer.base_cache_path) travels under the new one, so that
    the other machine finds it under its own data folder."""
    from .profiles import build_pairs
    from .studies import load_profile
    from .trainer import base_cache_paths
    found = {}
    for name in profiles:
        _, _, content = load_profile(name)
        runtime = {"data_dir": str(data_root), "cache_dir": str(cache_dir)}
        for pair in build_pairs(content, cache_dir / ".plan", None, runtime):
            for planned in pair.plan:
                c = planned.config()
                if not c.cache_base or c.dataset not in DATA_FOLDERS or c.base_classes == 0:
                    continue
                current, legacy = base_cache_paths(c, c.base_classes)  # a valid config's first phase
                source = current if current.exists() else legacy if legacy and legacy.exists() else None
                if source is not None:
                    found[source] = current.name
    return found


def run_state_files(folder: Path) -> list[Path]:
    """What a run folder needs to go on elsewhere, or to be reported: every file but its lock and
    progress files, and of its phase checkpoints only the newest (a resume reads no other)."""
    folder = Path(folder)
    phases = sorted(folder.glob("checkpoints/phase_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith((".lock", ".tmp"))
            and p.name != "progress.json" and not (p in phases and p != phases[-1])]


def snapshot(runs: list[Path], out: Path, root: Path) -> list[str]:
    """One tar of what each run folder needs to go on (run_state_files: config, metrics, its newest
    phase checkpoint and the epoch checkpoint of the phase under way), named relative to `root`,
    written atomically (a long run's state committed at a stop, docs/resume.md). Each epoch
    checkpoint is read back from the tar before it replaces `out`. One line per run: where it stands."""
    root, members, lines = Path(root).resolve(), [], []
    for run in map(Path, runs):
        run = run.resolve()
        if not (run / "config.json").is_file():
            raise CarryError(f"{run}: not a run folder (no config.json there)")
        if not run.is_relative_to(root):
            raise CarryError(f"{run}: not under --root {root}")
        files = run_state_files(run)
        members += [(p, str(p.relative_to(root))) for p in files]
        try:
            state = res.describe_state(run, res.load_config(run))
        except res.CheckpointError as e:
            raise CarryError(f"{e}; nothing written") from None
        lines.append(f"{run.relative_to(root)}: {state} "
                     f"({len(files)} files, {sum(p.stat().st_size for p in files) / MIB:.1f} MiB)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:
            for path, name in members:
                tar.add(path, arcname=name)
        with tarfile.open(tmp) as tar:  # what a resume will read, read back
            for member in tar.getmembers():
                if member.name.endswith("checkpoints/epoch.pt"):
                    _check_epoch_checkpoint(tar, member)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the snapshot before this one stays whole
        raise
    os.replace(tmp, out)
    return lines


def _check_epoch_checkpoint(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """A CarryError unless the tar's epoch checkpoint loads and says its phase, stage and epoch."""
    try:
        state = torch.load(io.BytesIO(tar.extractfile(member).read()), map_location="cpu", weights_only=True)
        why = None if {"phase", "epoch", "stage"} <= set(state) else "no phase, stage or epoch in it"
    except Exception as e:  # noqa: BLE001  (torch raises many types for a damaged file)
        why = type(e).__name__
    if why:
        raise CarryError(f"{member.name}: unreadable in the snapshot ({why}); nothing written")


def _members(data_root: Path | None, cache_dir: Path | None, profiles: list[str] | None = None,
             results: Path | None = None) -> list[tuple[Path, str]]:
    """(file, name in the archive) of everything a campaign needs: each data folder whole (its
    SHA256SUMS included) under data/, the base-phase cache files under cache/base/ (those of
    `profiles`' runs, renamed to their data-content key, or without profiles every file as named),
    and the runs under way in `results` (run_state_files) under results/runs/."""
    members = []
    for name in DATA_FOLDERS if data_root is not None else ():
        folder = data_root / name
        if not (folder / "SHA256SUMS").is_file():
            raise CarryError(f"{folder}: no SHA256SUMS there; pack needs the array format of CIFAR-100 "
                             f"(point --data at the folder that holds {name}/)")
        members += [(p, f"data/{name}/{p.name}") for p in sorted(folder.iterdir()) if p.is_file()]
    if cache_dir is not None and profiles:
        members += [(p, f"cache/base/{name}") for p, name in sorted(profile_base_phases(profiles, data_root,
                                                                                        cache_dir).items())]
    elif cache_dir is not None and (cache_dir / "base").is_dir():
        members += [(p, f"cache/base/{p.name}") for p in sorted((cache_dir / "base").glob("*.pt"))]
    for run in sorted((Path(results) / "runs").iterdir()) if results and (Path(results) / "runs").is_dir() else ():
        if run.is_dir() and not res.is_complete(run):
            members += [(p, f"results/runs/{run.name}/{p.relative_to(run)}") for p in run_state_files(run)]
    return members


def pack(data_root: Path, out: Path, cache_dir: Path | None = None, part_bytes: int | None = None,
         repo: Path = provenance.REPO_ROOT, limit_mib: float = LIMIT_MIB, margin_mib: float = MARGIN_MIB,
         profiles: list[str] | None = None, results: Path | None = None) -> dict:
    """Write out/part-KK-of-NN.bin and out/manifest.json; return the manifest. Without
    `part_bytes`, a part is as large as the limit allows beside the work tree and the margin."""
    out = Path(out)
    tree = work_tree_bytes(repo) if (repo / ".git").exists() else 0
    room = int(limit_mib * MIB) - tree - int(margin_mib * MIB) - 64 * 1024  # 64 KiB: the manifest
    if part_bytes is None:
        part_bytes = room
    if part_bytes <= 0 or part_bytes > room:
        raise CarryError(f"a part of {part_bytes / MIB:.1f} MiB does not fit beside the work tree "
                         f"({tree / MIB:.1f} MiB) under {limit_mib} MiB with {margin_mib} MiB to spare")
    members = _members(Path(data_root) if data_root else None, Path(cache_dir) if cache_dir else None, profiles,
                       results)
    return write_parts(members, out, part_bytes, {"work_tree_bytes": tree, "limit_mib": limit_mib,
                                                  "margin_mib": margin_mib, "commit": provenance.git_state(repo)["commit"]})


def write_parts(members: list[tuple[Path, str]], out: Path, part_bytes: int, about: dict | None = None,
                max_parts: int | None = None) -> dict:
    """One tar stream of `members` ((file, name in the archive)), cut into out/part-KK-of-NN.bin of
    at most `part_bytes`, and out/manifest.json with every part's sha256 (and `about`)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").exists():
            raise CarryError(f"{out}: exists and holds no earlier packing; give --out an empty or new folder")
        for old in [*out.glob("part-*.bin"), out / "manifest.json"]:  # an earlier packing: replaced
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    stream = out / "stream.tar"
    with tarfile.open(stream, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in members:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    size = stream.stat().st_size
    count = max(1, -(-size // part_bytes))
    if max_parts is not None and count > max_parts:
        stream.unlink()
        raise CarryError(f"{size / MIB:.1f} MiB to pack needs {count} parts of {part_bytes / MIB:.1f} MiB, "
                         f"more than the {max_parts} that can come back")
    parts = []
    with open(stream, "rb") as fh:
        for k in range(1, count + 1):
            name = f"part-{k:02d}-of-{count:02d}.bin"
            chunk = fh.read(part_bytes)
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    whole = provenance.sha256(stream)
    stream.unlink()
    manifest = {"format": 1, "parts": parts, "bytes": size, "sha256": whole,
                "files": [name for _, name in members], "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(about or {})}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CarryError(f"{path}: missing; carry manifest.json with every part (python -m lucir.carry pack "
                         f"writes it beside the parts)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CarryError(f"{path}: not a manifest (truncated or garbled); carry it again from the packing "
                         f"machine") from None


def _check_part(path: Path, entry: dict) -> None:
    if not path.is_file():
        raise CarryError(f"{entry['name']}: missing from {path.parent}; carry it (and run receive) before unpack")
    size = path.stat().st_size
    if size != entry["bytes"] or provenance.sha256(path) != entry["sha256"]:
        raise CarryError(f"{path}: corrupt ({size} bytes, sha256 differs from manifest.json); carry "
                         f"{entry['name']} again")


def receive(carried: Path, store: Path) -> list[str]:
    """Check the parts found in `carried` (the folder the command brought) against its manifest
    and move them, with the manifest, into `store`; return the names of the parts now in store."""
    carried, store = Path(carried), Path(store)
    manifest = _manifest(carried)
    store.mkdir(parents=True, exist_ok=True)
    here = [e for e in manifest["parts"] if (carried / e["name"]).is_file()]
    if not here:
        raise CarryError(f"{carried}: holds no part of manifest.json; name one part in the command's carry")
    previous = store / "manifest.json"
    if previous.exists() and _manifest(store)["sha256"] != manifest["sha256"]:
        raise CarryError(f"{store}: holds parts of another packing; empty it (rm -r {store}) and carry every "
                         f"part of this one")
    for entry in here:
        _check_part(carried / entry["name"], entry)
        shutil.move(str(carried / entry["name"]), str(store / entry["name"]))
    shutil.copyfile(carried / "manifest.json", store / "manifest.json")
    return [e["name"] for e in manifest["parts"] if (store / e["name"]).is_file()]


def extract_parts(store: Path, to: Path) -> list[str]:
    """Check that every part of store/manifest.json is there and whole, join them, and extract the
    archive under `to`; return the names extracted. One line naming what is wrong otherwise."""
    store, to = Path(store), Path(to)
    manifest = _manifest(store)
    missing = [e["name"] for e in manifest["parts"] if not (store / e["name"]).is_file()]
    if missing:
        raise CarryError(f"{store}: {len(missing)} of {len(manifest['parts'])} parts missing ({', '.join(missing)}); "
                         f"carry them and run receive")
    for entry in manifest["parts"]:
        _check_part(store / entry["name"], entry)
    joined = io.BytesIO()
    for entry in manifest["parts"]:
        joined.write((store / entry["name"]).read_bytes())
    if hashlib.sha256(joined.getbuffer()).hexdigest() != manifest["sha256"]:
        raise CarryError(f"{store}: the joined parts differ from what was packed; pack and carry them again")
    joined.seek(0)
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=joined, mode="r") as tar:
        names = tar.getnames()
        if sorted(names) != sorted(manifest["files"]) or any(n.startswith("/") or ".." in n.split("/") for n in names):
            raise CarryError(f"{store}: the archive's files differ from manifest.json; pack again")
        tar.extractall(to, filter="data")
    return names


def unpack(store: Path, to: Path) -> dict:
    """Check every part, join them, extract data/ and cache/ under `to`, and check every data file
    against its SHA256SUMS. Returns {"data": folder for LUCIR_DATA, "cache": folder for
    --cache-dir, "files": count}."""
    to = Path(to)
    names = extract_parts(store, to)
    for name in DATA_FOLDERS if any(n.startswith("data/") for n in names) else ():
        folder = to / "data" / name
        bad = [f for f in provenance.data_checksums(folder) if not f["ok"]]
        if bad:
            raise CarryError(f"{folder / bad[0]['file']}: does not match {folder / 'SHA256SUMS'}; pack and carry again")
    return {"data": str(to / "data"), "cache": str(to / "cache"), "results": str(to / "results"), "files": len(names)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lucir.carry", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="cut the data (and base-phase cache) into parts, here")
    a.add_argument("--data", default=os.environ.get("LUCIR_DATA"), help="data folder (default: $LUCIR_DATA)")
    a.add_argument("--cache-dir", help="base-phase cache folder whose base/*.pt files go along")
    a.add_argument("--out", default=".carry", help="folder of the parts (ignored by git; default .carry)")
    a.add_argument("--results", help="a study results folder whose runs under way go along (to go on there)")
    a.add_argument("--profile", action="append", help="take the cached base phases of this study profile's runs, "
                   "named by their data-content key (repeatable; default: every cache file as named)")
    a.add_argument("--part-mib", type=float, help="size of a part (default: the most the limit allows)")
    a.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="what one command carries in all")
    b = sub.add_parser("receive", help="there: check the carried parts and move them into the store")
    b.add_argument("carried", help="the folder the command brought (.carry)")
    b.add_argument("--store", default="/tmp/lucir-carry", help="where parts wait between commands")
    c = sub.add_parser("unpack", help="there: check every part, join, extract, check the data")
    c.add_argument("--store", default="/tmp/lucir-carry")
    c.add_argument("--to", default="/tmp/lucir-data", help="gets data/ (LUCIR_DATA) and cache/ (--cache-dir)")
    d = sub.add_parser("snapshot", help="here: one tar of what run folders need to go on elsewhere "
                       "(a long run's newest state, committed at a stop)")
    d.add_argument("runs", nargs="+", help="run folders (results/runs/<name>)")
    d.add_argument("--out", required=True, help="the tar to write (replaced whole, once it is checked)")
    d.add_argument("--root", default=".", help="names in the tar are relative to this folder (default: here)")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            if not args.data and not args.results:
                raise CarryError("nothing to pack: give --data DIR (or set LUCIR_DATA) and/or --results DIR")
            m = pack(Path(args.data).expanduser() if args.data else None, Path(args.out),
                     Path(args.cache_dir).expanduser() if args.cache_dir else None,
                     int(args.part_mib * MIB) if args.part_mib else None, limit_mib=args.limit_mib,
                     profiles=args.profile, results=Path(args.results).expanduser() if args.results else None)
            print(f"{len(m['parts'])} parts of at most {max(e['bytes'] for e in m['parts']) / MIB:.1f} MiB in {args.out} "
                  f"({m['bytes'] / MIB:.1f} MiB, {len(m['files'])} files; work tree {m['work_tree_bytes'] / MIB:.1f} "
                  f"MiB; limit {m['limit_mib']} MiB a command)")
            for e in m["parts"]:
                print(f"  {e['name']}  {e['bytes'] / MIB:6.1f} MiB  carry: [\"{args.out}/manifest.json\", "
                      f"\"{args.out}/{e['name']}\"]")
        elif args.command == "receive":
            have = receive(Path(args.carried), Path(args.store))
            total = len(_manifest(Path(args.store))["parts"])
            print(f"{len(have)} of {total} parts in {args.store}" + ("; all there: run unpack" if len(have) == total
                                                                      else ""))
        elif args.command == "snapshot":
            lines = snapshot([Path(r).expanduser() for r in args.runs], Path(args.out), Path(args.root).expanduser())
            print(f"{args.out}: {os.path.getsize(args.out) / MIB:.1f} MiB")
            for line in lines:
                print(f"  {line}")
        else:
            r = unpack(Path(args.store), Path(args.to))
            print(f"{r['files']} files checked and unpacked: LUCIR_DATA={r['data']} --cache-dir {r['cache']} "
                  f"(runs under way, if any: {r['results']})")
    except CarryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
