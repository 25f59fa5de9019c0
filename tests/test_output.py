"""The one output path: the guard, atomic writes and transactional commits, with fault injection."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medgen.errors import OutputError, OutputPathError
from napari_medgen.io import output as out_mod
from napari_medgen.io.nifti import read_nifti, write_nifti
from napari_medgen.io.output import OutputTransaction, check_outputs, same_file, write_bytes, write_file


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Anything in the folder that is not a finished file: temporaries, partial files."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or out_mod.PARTIAL_SUFFIX in p.name)


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"the user's scan")
    return path


# -- the guard --------------------------------------------------------------------------------
def test_an_output_that_is_the_input_is_refused_through_every_alias(tmp_path, scan, monkeypatch):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    monkeypatch.chdir(tmp_path)
    aliases = [scan, link, tmp_path / "sub" / ".." / "scan.nii.gz", hard, Path("scan.nii.gz"), Path("./sub/../scan.nii.gz")]
    for alias in aliases:
        for overwrite in (False, True):
            with pytest.raises(OutputPathError, match="is the input file"):
                check_outputs([alias], [("input", scan)], overwrite=overwrite)
    assert scan.read_bytes() == b"the user's scan"
    assert same_file(hard, scan) and same_file(link, scan) and not same_file(tmp_path / "new.nii", scan)


def test_two_outputs_that_are_one_file_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(OutputPathError, match="are the same file"):
        check_outputs([tmp_path / "a.nii.gz", tmp_path / "x" / ".." / "a.nii.gz"], roles=["output", "mask"])


def test_an_existing_file_is_replaced_only_when_allowed(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"earlier result")
    with pytest.raises(OutputPathError, match="already exists; use --overwrite"):
        check_outputs([target])
    assert check_outputs([target], overwrite=True) == [target.resolve()]
    with pytest.raises(OutputPathError, match="already exists"):
        write_bytes(target, b"new")
    assert target.read_bytes() == b"earlier result"
    write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"


def test_a_parent_that_is_a_file_or_missing_gets_a_clear_message(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="notes.txt' is a file, not a folder"):
        check_outputs([blocker / "out.nii.gz"])
    with pytest.raises(OutputPathError, match="does not exist"):
        check_outputs([tmp_path / "nowhere" / "out.nii.gz"])
    assert check_outputs([tmp_path / "new" / "out.nii.gz"], create_dirs=True)
    with pytest.raises(OutputPathError, match="is a folder"):
        check_outputs([tmp_path])


def test_an_unwritable_place_is_found_before_any_compute(tmp_path, monkeypatch):
    def refuse(folder, name):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(out_mod, "_open_temp", refuse)
    with pytest.raises(OutputPathError, match="read-only file system"):
        check_outputs([tmp_path / "out.nii.gz"])


def test_free_space_is_checked(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputPathError, match="not enough free space"):
        check_outputs([tmp_path / "big.nii"], expected_bytes=[10**6])
    check_outputs([tmp_path / "small.nii"], expected_bytes=[10])


# -- atomic writes ----------------------------------------------------------------------------
def test_a_writer_that_fails_midway_leaves_nothing_and_the_earlier_file_intact(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"earlier result")

    def half_then_fail(fh):
        fh.write(b"x" * 100_000)
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="no space left on the device; nothing was written"):
        write_file(target, half_then_fail, overwrite=True)
    assert target.read_bytes() == b"earlier result"
    assert leftovers(tmp_path) == []
    with pytest.raises(OutputError):
        write_file(tmp_path / "fresh.nii", half_then_fail)
    assert not (tmp_path / "fresh.nii").exists() and leftovers(tmp_path) == []


def test_named_temporaries_where_the_file_system_has_no_anonymous_files(tmp_path, monkeypatch):
    monkeypatch.setattr(out_mod, "_anonymous_supported", lambda: False)
    target = tmp_path / "a.json"

    def fail(fh):
        fh.write(b"{")
        raise OSError(122, "Disk quota exceeded")

    with pytest.raises(OutputError, match="quota"):
        write_file(target, fail)
    assert leftovers(tmp_path) == [] and not target.exists()
    write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}" and leftovers(tmp_path) == []


def test_nifti_round_trip_through_the_atomic_writer(tmp_path, phantom):
    vol = phantom[0]
    for name in ("a.nii.gz", "b.nii"):
        path = write_nifti(vol, tmp_path / name)
        np.testing.assert_array_equal(read_nifti(path).data, vol.data)
    assert leftovers(tmp_path) == []
    assert oct(os.stat(tmp_path / "a.nii.gz").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- transactions ------------------------------------------------------------------------------
def test_a_failed_second_output_leaves_no_first_output(tmp_path):
    image, mask = tmp_path / "les.nii.gz", tmp_path / "les_mask.nii.gz"
    image.write_bytes(b"earlier image")

    def fail(fh):
        fh.write(b"partial")
        raise OSError(27, "File too large")

    with pytest.raises(OutputError, match="larger than"):
        with OutputTransaction(overwrite=True) as tx:
            tx.add(image, lambda fh: fh.write(b"new image"))
            tx.add(mask, fail, role="output 'mask'")
            tx.commit()
    assert image.read_bytes() == b"earlier image" and not mask.exists()
    assert leftovers(tmp_path) == []


def test_a_rename_that_fails_rolls_back_the_ones_already_done(tmp_path, monkeypatch):
    a, b, side = tmp_path / "a.nii.gz", tmp_path / "a_regions.nii.gz", tmp_path / "a.medgen.json"
    a.write_bytes(b"earlier a")
    b.write_bytes(b"earlier b")
    real_replace, real_link = os.replace, os.link

    def failing_on_sidecar(real):
        def call(src, dst, *args, **kwargs):
            if str(dst) == str(side.resolve()):
                raise OSError(5, "Input/output error")
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(out_mod.os, "replace", failing_on_sidecar(real_replace))
    monkeypatch.setattr(out_mod.os, "link", failing_on_sidecar(real_link))
    with pytest.raises(OutputError, match="nothing was written"):
        with OutputTransaction(overwrite=True) as tx:
            tx.add(a, lambda fh: fh.write(b"new a"))
            tx.add(b, lambda fh: fh.write(b"new b"))
            tx.add(side, lambda fh: fh.write(b"{}"))
            tx.commit()
    monkeypatch.undo()
    assert a.read_bytes() == b"earlier a" and b.read_bytes() == b"earlier b" and not side.exists()
    assert leftovers(tmp_path) == []


def test_outputs_are_renamed_in_the_order_added_sidecar_last(tmp_path, monkeypatch):
    order = []
    real_link = os.link

    def spy_link(src, dst, *args, **kwargs):
        if not str(src).startswith("/proc"):
            order.append(Path(dst).name)
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(out_mod.os, "link", spy_link)
    with OutputTransaction() as tx:
        tx.add(tmp_path / "x.nii.gz", lambda fh: fh.write(b"1"))
        tx.add(tmp_path / "x_mask.nii.gz", lambda fh: fh.write(b"2"))
        tx.add(tmp_path / "x.medgen.json", lambda fh: fh.write(b"3"))
        tx.commit()
    assert order == ["x.nii.gz", "x_mask.nii.gz", "x.medgen.json"]


# -- real processes: a file-size limit, SIGKILL ------------------------------------------------
WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from napari_medgen.io.nifti import write_nifti
    from napari_medgen.volume import Volume
    data = np.random.default_rng(0).random((int(sys.argv[2]), 256, 256), dtype=np.float32)
    print("writing", flush=True)
    write_nifti(Volume.from_spacing(data), sys.argv[1], overwrite=True)
    print("done", flush=True)
    """
)


def test_a_file_size_limit_midway_leaves_the_earlier_file_intact(tmp_path):
    target = tmp_path / "result.nii"
    target.write_bytes(b"earlier result")
    before = digest(target)
    # 64 slices of 256 x 256 float32 = 16 MB; the limit is 2 MB (ulimit -f counts 1 KiB blocks)
    cmd = f"ulimit -f 2048; exec {sys.executable} -c '{WRITER}' {target} 64"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "OutputError" in proc.stderr and "larger than" in proc.stderr
    assert digest(target) == before
    assert leftovers(tmp_path) == []


def test_sigkill_during_a_large_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"earlier result")
    before = digest(target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "600"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(1.0)  # gzip of 150 MB of noise takes several seconds: kill it midway
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert "done" not in rest  # it was killed while writing
    assert digest(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]
