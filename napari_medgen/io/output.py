"""The one output path every write goes through: guard, atomic write, transactional commit.

Everything napari-medgen writes (a result, its sidecar, a model and its card, a viewer save)
goes through this module, in the manner of pip's ``adjacent_tmp_file`` + ``replace``:

* **Guard** (:func:`check_outputs`, before any compute): an output that is the same file as
  an input (same real path or same inode: symlinks, ``..``, hard links, relative paths) or as
  another output of the run is refused, always. An existing file is replaced only when the
  caller allows it. The folder must exist (or be creatable), be writable (proved by creating
  a temporary file there) and have the expected free space.
* **Atomic**: each file is first written as an anonymous file in the target's folder
  (``O_TMPFILE`` where the file system has it, so a killed process leaves nothing; else a
  hidden ``.<name>.<pid>-<hex>.medgen-partial`` file), flushed and fsync'd. Only a complete
  file gets a name; it is then ``os.replace``d onto the final name and the folder is fsync'd.
* **Transactional** (:class:`OutputTransaction`): a run's outputs are all written first and
  renamed only when all are complete; if a rename fails, the outputs already renamed are rolled
  back to what was there before. A failure leaves none of them under a final name and every
  earlier file intact.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

from ..errors import OutputError, OutputExists, OutputPathError

__all__ = [
    "same_file",
    "check_outputs",
    "check_free_space",
    "OutputTransaction",
    "write_file",
    "write_bytes",
    "write_json",
    "PARTIAL_SUFFIX",
]

#: suffix of the hidden temporaries used where the file system has no anonymous files
PARTIAL_SUFFIX = ".medgen-partial"
_BUFFER = 1 << 20
Writer = Callable[[IO[bytes]], None]


# -- identity ---------------------------------------------------------------------------------
def _real(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks and ``..`` resolved (the file a write would really hit)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same real path, or the same inode (hard links)."""
    ra, rb = _real(a), _real(b)
    if ra == rb:
        return True
    ia = _inode(ra)
    return ia is not None and ia == _inode(rb)


def _fmt(path: str | os.PathLike) -> str:
    return repr(os.fspath(path))


def _reason(exc: OSError) -> str:
    """A short, user-facing reason for an OS error while writing."""
    known = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is larger than this system or a file-size limit allows",
        errno.EROFS: "the folder is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ENAMETOOLONG: "the file name is too long",
    }
    return known.get(exc.errno or 0, exc.strerror or type(exc).__name__)


# -- guard ------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, role: str, given: Path) -> None:
    """Create (and drop) a temporary file in ``folder``: the only sure test of writability."""
    try:
        fd, name = _open_temp(folder, ".medgen-write-test")
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {role} {_fmt(given)}: cannot write in the folder {_fmt(folder)} ({_reason(exc)})"
        ) from None
    os.close(fd)
    if name is not None:
        try:
            os.unlink(name)
        except OSError:  # pragma: no cover - removed by someone else
            pass


def check_outputs(
    outputs: Sequence[str | os.PathLike],
    protected: Iterable[tuple[str, str | os.PathLike]] = (),
    *,
    overwrite: bool = False,
    expected_bytes: Sequence[int] | None = None,
    create_dirs: bool = False,
    hint: str = "use --overwrite to replace it",
    roles: Sequence[str] | None = None,
) -> list[Path]:
    """Check every output place before any compute; return the real paths the writes will hit.

    ``protected`` lists ``(role, path)`` of everything the run reads (input, references, mask,
    points, model files): an output that is one of them is refused whatever ``overwrite`` says.
    ``roles`` names the outputs in messages (default "output"). ``expected_bytes`` per output
    is checked against the free space of its file system. Raises :class:`OutputPathError`.
    """
    roles = list(roles) if roles is not None else ["output"] * len(outputs)
    guarded = [(role, Path(p)) for role, p in protected if p is not None and str(p) != ""]
    finals: list[Path] = []
    for i, given in enumerate(outputs):
        role = roles[i]
        given_p = Path(given)
        final = _real(given_p)
        for other_role, other in guarded:
            if same_file(final, other):
                same = "" if _real(other) == _real(given_p) or str(other) == str(given_p) else f" ({_fmt(other)})"
                raise OutputPathError(
                    f"{role} {_fmt(given_p)} is the {other_role} file{same}; writing it would destroy the "
                    f"{other_role}: choose another name"
                )
        for j, earlier in enumerate(finals):
            if same_file(final, earlier) or final == earlier:
                raise OutputPathError(
                    f"{role} {_fmt(given_p)} and {roles[j]} {_fmt(outputs[j])} are the same file; give them different names"
                )
        folder = final.parent
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            raise OutputPathError(f"cannot write {role} {_fmt(given_p)}: {_fmt(existing)} is a file, not a folder")
        if existing != folder:
            if not create_dirs:
                raise OutputPathError(f"the folder of {role} {_fmt(given_p)} does not exist: {_fmt(folder)}")
            _probe_writable(existing, role, given_p)
        else:
            if final.is_dir():
                raise OutputPathError(f"{role} {_fmt(given_p)} is a folder; give a file name")
            if final.exists() or final.is_symlink():
                if not overwrite:
                    raise OutputExists(f"{role} {_fmt(given_p)} already exists; {hint}", str(final))
                if not (final.is_file() or final.is_symlink()):
                    raise OutputPathError(f"{role} {_fmt(given_p)} exists and is not a regular file")
            _probe_writable(folder, role, given_p)
        finals.append(final)
    if expected_bytes is not None:
        check_free_space(finals, expected_bytes)
    return finals


def check_free_space(paths: Sequence[str | os.PathLike], expected_bytes: Sequence[int]) -> None:
    """Refuse (:class:`OutputPathError`) when a file system has less room than its outputs need."""
    need: dict[int, tuple[Path, int]] = {}
    for path, size in zip(paths, expected_bytes):
        if size <= 0:
            continue
        where = _nearest_existing(_real(path).parent)
        dev = os.stat(where).st_dev
        first, total = need.get(dev, (where, 0))
        need[dev] = (first, total + int(size))
    for where, total in need.values():
        free = shutil.disk_usage(where).free
        if free < total:
            raise OutputPathError(
                f"not enough free space in {_fmt(where)}: the output needs about {total / 2**20:.0f} MB, "
                f"{free / 2**20:.0f} MB are free"
            )


# -- temporaries --------------------------------------------------------------------------------
def _anonymous_supported() -> bool:
    return hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _partial_name(folder: Path, target_name: str) -> Path:
    return folder / f".{target_name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"


def _open_temp(folder: Path, target_name: str) -> tuple[int, Path | None]:
    """An open file descriptor in ``folder``: anonymous (name None) where possible, else a hidden name."""
    if _anonymous_supported():
        try:
            return os.open(folder, os.O_TMPFILE | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    name = _partial_name(folder, target_name)
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), name


def _drop_cached(path: Path) -> None:
    """Let the kernel drop the cached pages of a file about to be replaced (it stays intact on disk).

    An in-place overwrite frees them as it truncates; a write beside the file would otherwise
    need as much fresh memory again, which on virtual machines costs as much as the write.
    """
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not on macOS
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:  # pragma: no cover - advice only
        pass
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(fd)


def _remove(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


@dataclass
class _Pending:
    """One output written completely to a temporary, waiting for the commit."""

    final: Path
    role: str
    fd: int | None = None  # anonymous file still open
    temp: Path | None = None  # named temporary (complete)
    backup: Path | None = None
    committed: bool = False
    existed: bool = False

    def name_it(self) -> None:
        """Give the complete anonymous file a hidden name beside its target."""
        if self.temp is not None or self.fd is None:
            return
        name = _partial_name(self.final.parent, self.final.name)
        dfd = os.open(self.final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.link(f"/proc/self/fd/{self.fd}", name.name, dst_dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)
        self.temp = name
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        _remove(self.temp)
        self.temp = None


@dataclass
class OutputTransaction:
    """Write several files and give them their final names together, or not at all.

    ``add`` writes a file's content at once to a temporary beside its target; ``commit``
    renames them all onto their final names (in the order added: a sidecar added last is
    renamed last). Used as a context manager, an exception before the commit discards every
    temporary. ``overwrite=False`` refuses to replace a file that exists at commit time.
    """

    overwrite: bool = False
    hint: str = "pass overwrite=True to replace it"
    _items: list[_Pending] = field(default_factory=list)
    _done: bool = False

    def __enter__(self) -> "OutputTransaction":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._done:
            self.abort()

    def add(self, path: str | os.PathLike, writer: Writer, role: str = "output") -> Path:
        """Write ``path``'s content with ``writer(binary_file)`` into a temporary; returns the final path."""
        if self._done:
            raise RuntimeError("this output transaction is already finished")
        final = _real(path)
        if not self.overwrite and os.path.lexists(final):
            self.abort()
            raise OutputExists(f"{role} {_fmt(path)} already exists; {self.hint}", str(final))
        if self.overwrite:
            _drop_cached(final)
        try:
            fd, name = _open_temp(final.parent, final.name)
        except OSError as exc:
            self.abort()
            raise OutputError(f"could not write {role} {_fmt(path)}: {_reason(exc)}") from None
        item = _Pending(final, role, fd=fd if name is None else None, temp=name)
        self._items.append(item)
        try:
            with open(fd, "wb", buffering=_BUFFER, closefd=name is not None) as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if name is None:
                item.name_it()
        except OSError as exc:
            self.abort()
            raise OutputError(f"could not write {role} {_fmt(path)}: {_reason(exc)}; nothing was written") from None
        except BaseException:
            self.abort()
            raise
        return final

    def commit(self) -> list[Path]:
        """Move every complete temporary onto its final name; roll all back on failure."""
        if self._done:
            raise RuntimeError("this output transaction is already finished")
        several = len(self._items) > 1
        try:
            for item in self._items:
                self._commit_one(item, keep_backup=several)
        except BaseException as exc:
            self._rollback()
            self.abort()
            if isinstance(exc, OutputError):
                raise
            if isinstance(exc, OSError):
                raise OutputError(
                    f"could not write {item.role} {_fmt(item.final)}: {_reason(exc)}; nothing was written"
                ) from None
            raise
        for item in self._items:
            _remove(item.backup)
        for folder in {item.final.parent for item in self._items}:
            _fsync_dir(folder)
        self._done = True
        return [item.final for item in self._items]

    def _commit_one(self, item: _Pending, keep_backup: bool) -> None:
        final, temp = item.final, item.temp
        assert temp is not None
        item.existed = os.path.lexists(final)
        if item.existed and not self.overwrite:
            raise OutputPathError(f"{item.role} {_fmt(final)} appeared while writing; it was left as it is")
        if item.existed and keep_backup:
            backup = _partial_name(final.parent, final.name + ".previous")
            try:
                os.link(final, backup)  # the old file stays under its name until the replace
            except OSError:
                shutil.copy2(final, backup)
            item.backup = backup
        if not item.existed:
            try:  # no-clobber: fails if the name was taken meanwhile
                os.link(temp, final)
                _remove(temp)
                item.temp = None
                item.committed = True
                return
            except FileExistsError:
                raise OutputPathError(f"{item.role} {_fmt(final)} appeared while writing; it was left as it is") from None
            except OSError:
                pass  # a file system without hard links: replace below
        os.replace(temp, final)
        item.temp = None
        item.committed = True

    def _rollback(self) -> None:
        for item in reversed(self._items):
            if not item.committed:
                continue
            try:
                if item.backup is not None:
                    os.replace(item.backup, item.final)
                    item.backup = None
                elif not item.existed:
                    os.unlink(item.final)
            except OSError:  # pragma: no cover - best effort; the error is reported anyway
                pass
            item.committed = False

    def abort(self) -> None:
        """Discard every temporary; no final name is touched."""
        for item in self._items:
            item.discard()
            _remove(item.backup)
            item.backup = None
        self._done = True


# -- one-file helpers ---------------------------------------------------------------------------
def write_file(path: str | os.PathLike, writer: Writer, *, overwrite: bool = False, role: str = "output") -> Path:
    """Write one file atomically with ``writer(binary_file)``; returns its final path."""
    with OutputTransaction(overwrite=overwrite) as tx:
        tx.add(path, writer, role=role)
        return tx.commit()[0]


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False, role: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_file(path, lambda fh: fh.write(data), overwrite=overwrite, role=role)


def json_writer(record: Any, default: Callable[[Any], Any] | None = None) -> Writer:
    """A writer of ``record`` as indented UTF-8 JSON (serialised before any byte is written)."""
    text = (json.dumps(record, indent=2, default=default) + "\n").encode("utf-8")
    return lambda fh: fh.write(text)


def write_json(path: str | os.PathLike, record: Any, *, overwrite: bool = False, role: str = "sidecar") -> Path:
    """Write ``record`` as JSON to ``path`` atomically."""
    return write_file(path, json_writer(record), overwrite=overwrite, role=role)
