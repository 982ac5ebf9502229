"""Write files and directories atomically: readers see the old content or the new one, never a mix.

Every output prunekit writes goes through here. A temporary file (``tempfile.mkstemp``, ``O_EXCL``: a name
planted in advance, symlink or not, is never opened) or directory (``tempfile.mkdtemp``) is made next to the
target, filled, flushed to disk, given the mode a plain ``open()`` / ``mkdir()`` would give under the
current umask (``0o666 & ~umask``, ``0o777 & ~umask``), and moved onto the target with one ``os.replace``,
which replaces a symlink at the target rather than following it. Any exception, ``KeyboardInterrupt``
included, removes the temporary.

Outputs that are several sibling files (OpenVINO's ``.xml`` + ``.bin``) are staged together in one
temporary directory and moved file by file (:func:`atomic_files`).

Replacing a directory takes two renames (old -> backup, new -> target). A crash between them leaves the
target missing and the backup next to it; :func:`recover_dir` (called before every directory write and by
readers that want it) puts the backup back. Temporaries and backups carry the writing process id in a
recognisable name, ``.NAME.pk-PID-RANDOM.tmp`` / ``.NAME.pk-PID-RANDOM.old``; :func:`clean_stale` removes
those whose process is gone (or that are older than a day), and only those.

>>> import tempfile
>>> target = Path(tempfile.mkdtemp()) / "x.txt"
>>> _ = write_text(target, "hi"); target.read_text()
'hi'
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TAG = "pk"
STALE_AFTER_S = 24 * 3600
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (brief window, serialised among our threads)
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{TAG}-{os.getpid()}-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _finish_file(path: str | os.PathLike, mask: int) -> None:
    """fsync one file and give it the mode a plain ``open()`` would (``0o666 & ~mask``)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp and some writers (safetensors) create files 0o600
    finally:
        os.close(fd)


def _finish_tree(root: Path, mask: int) -> None:
    """fsync every file and folder under ``root`` and give them the modes a plain write would."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _finish_file(os.path.join(dirpath, name), mask)
        os.chmod(dirpath, 0o777 & ~mask)  # mkdtemp makes 0o700
        _fsync_dir(Path(dirpath))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], T]) -> T:
    """Call ``write(tmp)`` on a fresh temporary file next to ``path``, then move it onto ``path``.

    ``write`` may reopen ``tmp`` by name (``torch.save``, ``safetensors``, ``onnx``) and may raise to abandon
    the write: ``path`` is then untouched. Returns what ``write`` returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        result = write(tmp)
        _finish_file(tmp, umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return result


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes(path, text.encode())


def atomic_dir(
    path: str | os.PathLike, fill: Callable[[Path], T], *, replaceable: Callable[[Path], bool]
) -> T:
    """Call ``fill(tmp)`` on a fresh temporary directory next to ``path``, then make it ``path``.

    An existing ``path`` is replaced only if ``replaceable(path)`` says so (raise in it to refuse with a
    message); it stays reachable (as ``path`` or as a backup :func:`recover_dir` restores) until the new
    directory is complete. Returns what ``fill`` returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    try:
        result = fill(tmp)
        _finish_tree(tmp, umask())
        _swap_in(tmp, path, replaceable)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def atomic_files(path: str | os.PathLike, fill: Callable[[Path], T]) -> T:
    """Call ``fill(tmp)`` on a fresh temporary directory next to ``path``, then move every plain file
    directly inside it into ``path``'s directory, each with one ``os.replace``.

    For outputs that are several sibling files (``model.xml`` + ``model.bin``): ``fill`` writes them under
    their final names; a sub-directory of ``tmp`` is scratch space and is never moved. Any exception in
    ``fill`` leaves ``path``'s directory as it was. Returns what ``fill`` returned.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = atomic_files(d / "a.txt", lambda tmp: [(tmp / n).write_text("x") for n in ("a.txt", "a.bin")])
    >>> sorted(p.name for p in d.iterdir())
    ['a.bin', 'a.txt']
    """
    path = Path(path)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    try:
        result = fill(tmp)
        mask = umask()
        files = sorted(p for p in tmp.iterdir() if p.is_file() and not p.is_symlink())
        for item in files:
            _finish_file(item, mask)
        for item in files:
            os.replace(item, path.parent / item.name)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _swap_in(tmp: Path, path: Path, replaceable: Callable[[Path], bool]) -> None:
    if os.path.lexists(path) and not (path.is_dir() and not path.is_symlink() and replaceable(path)):
        raise FileExistsError(f"{path} exists and may not be replaced")
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return
    backup = path.parent / f"{_prefix(path)}{secrets.token_hex(4)}.old"
    os.rename(path, backup)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


def _ours(entry: Path, path: Path, suffixes: tuple[str, ...]) -> int | None:
    """The writer's pid if ``entry`` is one of our temporaries/backups for ``path``, else None."""
    head = f".{path.name}.{TAG}-"
    name = entry.name
    if not name.startswith(head) or not name.endswith(suffixes):
        return None
    pid, _, rest = name[len(head) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(entry: Path, pid: int) -> bool:
    try:
        age = time.time() - entry.lstat().st_mtime
    except OSError:
        return False
    return not _alive(pid) or age > STALE_AFTER_S


def recover_dir(path: str | os.PathLike) -> bool:
    """Put back the newest backup of ``path`` left by a crash between the two renames; True if it did.

    Only when ``path`` is missing and the backup's writer is gone.
    """
    path = Path(path)
    if os.path.lexists(path) or not path.parent.is_dir():
        return False
    backups = [
        e for e in path.parent.iterdir() if (pid := _ours(e, path, (".old",))) is not None and _stale(e, pid)
    ]
    if not backups:
        return False
    newest = max(backups, key=lambda e: e.lstat().st_mtime)
    try:
        os.rename(newest, path)
    except OSError:
        return False
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove our temporaries (and, when ``path`` exists, backups) for ``path`` whose writer is gone."""
    path = Path(path)
    suffixes = (".tmp", ".old") if os.path.lexists(path) else (".tmp",)
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else []:
        pid = _ours(entry, path, suffixes)
        if pid is None or not _stale(entry, pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
