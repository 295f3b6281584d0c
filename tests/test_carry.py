"""lucir.carry: the data cut into parts that each fit one command of the GPU machine beside the
work tree, carried part by part into a store, checked, joined and unpacked there; every missing or
corrupt part, and every data file that fails its SHA256SUMS, ends in one line naming it."""
import hashlib
import shutil

import pytest

from lucir import carry
from lucir.provenance import REPO_ROOT


def _data(root, corrupt: str | None = None):
    """A CIFAR-100 array-format folder in miniature: files of random bytes and their SHA256SUMS."""
    folder = root / "cifar100"
    folder.mkdir(parents=True)
    rng = __import__("random").Random(0)
    lines = []
    for name, size in (("labels.npz", 900), ("train_images_0.npy.xz", 7000), ("test_images.npy.xz", 3100)):
        blob = bytes(rng.randrange(256) for _ in range(size))
        (folder / name).write_bytes(blob)
        lines.append(f"{hashlib.sha256(blob).hexdigest()}  {name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    if corrupt:
        (folder / corrupt).write_bytes(b"not what was listed")
    cache = root / "cache" / "base"
    cache.mkdir(parents=True)
    (cache / "cifar100-resnet32-0123.pt").write_bytes(b"base weights" * 50)
    return root


def _carry_all(parts, store, run, skip=()):
    """Each part as one command of the device tool brings it: the manifest and that part alone in
    the work tree's .carry/, then `receive` moves it into the store outside the work tree."""
    for entry in carry._manifest(parts)["parts"]:
        if entry["name"] in skip:
            continue
        tree = run / "work" / ".carry"
        shutil.rmtree(run / "work", ignore_errors=True)
        tree.mkdir(parents=True)
        shutil.copy(parts / "manifest.json", tree)
        shutil.copy(parts / entry["name"], tree)
        assert carry.main(["receive", str(tree), "--store", str(store)]) == 0


def test_packed_parts_carried_one_by_one_unpack_to_the_same_files(tmp_path, capsys):
    src = _data(tmp_path / "here")
    parts = tmp_path / "parts"
    m = carry.pack(src, parts, cache_dir=src / "cache", part_bytes=4096, repo=tmp_path)
    assert len(m["parts"]) >= 4 and all(e["bytes"] <= 4096 for e in m["parts"])
    _carry_all(parts, tmp_path / "store", tmp_path)
    assert "all there: run unpack" in capsys.readouterr().out
    assert carry.main(["unpack", "--store", str(tmp_path / "store"), "--to", str(tmp_path / "there")]) == 0
    for name in ("labels.npz", "train_images_0.npy.xz", "test_images.npy.xz", "SHA256SUMS"):
        assert (tmp_path / "there" / "data" / "cifar100" / name).read_bytes() == (src / "cifar100" / name).read_bytes()
    assert (tmp_path / "there" / "cache" / "base" / "cifar100-resnet32-0123.pt").read_bytes() == b"base weights" * 50


def test_a_missing_part_is_named_in_one_line(tmp_path, capsys):
    src = _data(tmp_path / "here")
    parts = tmp_path / "parts"
    m = carry.pack(src, parts, part_bytes=4096, repo=tmp_path)
    left = m["parts"][1]["name"]
    _carry_all(parts, tmp_path / "store", tmp_path, skip={left})
    capsys.readouterr()
    assert carry.main(["unpack", "--store", str(tmp_path / "store"), "--to", str(tmp_path / "there")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and left in err and "missing" in err
    assert not (tmp_path / "there" / "data").exists()


def test_a_corrupt_part_is_refused_when_received_and_names_itself(tmp_path, capsys):
    src = _data(tmp_path / "here")
    parts = tmp_path / "parts"
    m = carry.pack(src, parts, part_bytes=4096, repo=tmp_path)
    bad = parts / m["parts"][0]["name"]
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    capsys.readouterr()
    assert carry.main(["receive", str(parts), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and m["parts"][0]["name"] in err and "corrupt" in err


def test_a_data_file_that_fails_its_checksum_is_named_after_unpacking(tmp_path, capsys):
    src = _data(tmp_path / "here", corrupt="train_images_0.npy.xz")
    parts = tmp_path / "parts"
    carry.pack(src, parts, part_bytes=1 << 20, repo=tmp_path)
    _carry_all(parts, tmp_path / "store", tmp_path)
    capsys.readouterr()
    assert carry.main(["unpack", "--store", str(tmp_path / "store"), "--to", str(tmp_path / "there")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_images_0.npy.xz" in err and "SHA256SUMS" in err


def test_each_part_fits_one_command_beside_this_work_tree(tmp_path):
    """By default a part is as large as the 64 MiB of one command allow beside the work tree as
    it is now (tracked and untracked files git does not ignore) and the margin; a part asked
    larger than that is refused."""
    src = _data(tmp_path / "here")
    m = carry.pack(src, tmp_path / "parts", repo=REPO_ROOT)
    tree = carry.work_tree_bytes(REPO_ROOT)
    assert m["work_tree_bytes"] == tree > 0
    room = carry.LIMIT_MIB * carry.MIB - carry.MARGIN_MIB * carry.MIB
    assert all(tree + e["bytes"] + (tmp_path / "parts" / "manifest.json").stat().st_size <= room for e in m["parts"])
    with pytest.raises(carry.CarryError, match="does not fit beside the work tree"):
        carry.pack(src, tmp_path / "parts", part_bytes=64 * carry.MIB, repo=REPO_ROOT)


def test_pack_never_empties_a_folder_it_did_not_write(tmp_path):
    src = _data(tmp_path / "here")
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(carry.CarryError, match="holds no earlier packing"):
        carry.pack(src, keep, part_bytes=4096, repo=tmp_path)
    assert (keep / "notes.txt").read_text() == "mine"


def _run_under_way(root):
    """A run folder as a long run leaves it at a stop: phase 2 of 5 under way at epoch 151, two
    phase checkpoints, its lock, progress file and a temporary file left by a killed write."""
    from lucir import make_config
    from lucir import results as res
    run = root / "results" / "runs" / "cifar100-b50-p5-s0-x"
    (run / "checkpoints").mkdir(parents=True)
    res.prepare_out_dir(run, make_config("icarl", phases=5))
    res.write_json(run / "metrics.json", {"phases": [{}, {}]})
    for k in (0, 1):
        res.save_state(run / "checkpoints" / f"phase_{k}.pt", {"phase": k})
    res.save_state(res.epoch_checkpoint_path(run), {"phase": 2, "stage": "train", "epoch": 151})
    for name in (".cifar100-b50-p5-s0-x.lock",):
        (run.parent / name).write_text("")
    (run / "progress.json").write_text("{}")
    (run / "checkpoints" / ".epoch.pt.abc.tmp").write_bytes(b"half")
    return run


def test_a_snapshot_holds_what_a_resume_reads_and_says_where_the_run_stands(tmp_path, capsys):
    import tarfile
    run = _run_under_way(tmp_path / "home")
    out = tmp_path / "repo" / "runs_in_progress" / "x.tar"
    assert carry.main(["snapshot", "--root", str(tmp_path / "home"), "--out", str(out), str(run)]) == 0
    said = capsys.readouterr().out
    assert "results/runs/cifar100-b50-p5-s0-x: under way: phase 2 of 5, epoch 151/160 (4 files" in said
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
        assert names == [f"results/runs/cifar100-b50-p5-s0-x/{n}" for n in
                         ("checkpoints/epoch.pt", "checkpoints/phase_1.pt", "config.json", "metrics.json")]
        tar.extractall(tmp_path / "there", filter="data")
    there = tmp_path / "there" / "results" / "runs" / "cifar100-b50-p5-s0-x"
    assert (there / "checkpoints" / "epoch.pt").read_bytes() == (run / "checkpoints" / "epoch.pt").read_bytes()


def test_a_snapshot_with_an_unreadable_epoch_checkpoint_replaces_nothing(tmp_path, capsys):
    run = _run_under_way(tmp_path / "home")
    out = tmp_path / "x.tar"
    out.write_bytes(b"the last good snapshot")
    (run / "checkpoints" / "epoch.pt").write_bytes(b"cut short")
    assert carry.main(["snapshot", "--root", str(tmp_path / "home"), "--out", str(out), str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "epoch.pt" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"the last good snapshot" and [p.name for p in tmp_path.iterdir()] == ["home", "x.tar"]
    assert carry.main(["snapshot", "--out", str(out), str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_an_epoch_checkpoint_damaged_inside_the_tar_is_refused(tmp_path):
    """The read-back of the written tar: a member that does not load, or loads without the phase,
    stage and epoch of an epoch checkpoint, is refused with a message naming it."""
    import io
    import tarfile

    import torch
    good = io.BytesIO()
    torch.save({"phase": 1, "stage": "train", "epoch": 3}, good)
    for blob, why in ((b"cut short", "UnpicklingError"), (None, "no phase, stage or epoch")):
        if blob is None:
            buf = io.BytesIO()
            torch.save({"phase": 1}, buf)
            blob = buf.getvalue()
        path = tmp_path / "t.tar"
        with tarfile.open(path, "w") as tar:
            for content in (good.getvalue(), blob):
                info = tarfile.TarInfo("r/checkpoints/epoch.pt")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        with tarfile.open(path) as tar:
            first, second = tar.getmembers()
            carry._check_epoch_checkpoint(tar, first)
            with pytest.raises(carry.CarryError, match=f"r/checkpoints/epoch.pt: unreadable.*{why}"):
                carry._check_epoch_checkpoint(tar, second)
