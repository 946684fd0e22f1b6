"""Durable atomic writes: a reader (or a resumed run) sees the old file or the
new one, never a torn mix, even after SIGKILL or a power cut.

Every writer follows one recipe: write a temp file in the target's folder (so
the rename stays on one file system), flush and fsync it, ``os.replace`` it
over the target, then fsync the folder so the rename itself is on disk.

Torch files: ``save_torch`` accepts only what ``torch.load(weights_only=True)``
can read back (tensors, numbers, strings, None, lists/tuples/dicts of them), so
a checkpoint handed over by someone else loads without executing code;
``load_torch`` reads that way and takes the pickle path only when the caller
passes ``allow_pickle=True``.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import shutil
from typing import Iterator

__all__ = ["fsync_dir", "atomic_open", "write_bytes", "write_text", "write_json", "save_torch",
           "load_torch", "check_weights_only", "atomic_dir", "replace_dir", "CheckpointError"]


class CheckpointError(ValueError):
    """A file that cannot be loaded as asked: the message names the file and what is wrong."""


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; nothing more can be done
        pass
    finally:
        os.close(fd)


def _temp_name(folder: str, name: str, kind: str) -> str:
    return os.path.join(folder, f".{name}.{kind}-{secrets.token_hex(6)}")


def _new_temp_file(folder: str, name: str) -> tuple[int, str]:
    """An exclusive new temp file; created with mode 0o666 so the umask decides, as for open()
    (mkstemp's 0600 would leave every result readable by its owner only)."""
    while True:
        tmp = _temp_name(folder, name, "tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # a 48-bit name collided: draw again
            continue


def _new_temp_dir(folder: str, name: str, kind: str) -> str:
    while True:
        tmp = _temp_name(folder, name, kind)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def _split(path: str) -> tuple[str, str]:
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    return folder, name


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """Open a temp file next to ``path``; on a clean exit it replaces ``path`` durably.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    folder, name = _split(path)
    fd, tmp = _new_temp_file(folder, name)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def write_json(path: str, obj, indent: int | None = 2) -> None:
    """JSON with ``allow_nan=False``: NaN/inf would make a file other JSON readers reject."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


# -- torch files ------------------------------------------------------------------
_PLAIN = (str, bytes, int, float, bool, type(None))


def check_weights_only(obj, where: str = "obj") -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    import torch

    # exact types: numpy scalars subclass float/int but pickle as numpy objects
    if type(obj) in _PLAIN or isinstance(obj, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str/int keys")
            check_weights_only(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_weights_only(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
                    f"torch.load(weights_only=True) cannot read; store tensors, numbers, strings, "
                    f"lists and dicts")


def save_torch(obj, path: str) -> None:
    """``torch.save`` durably and atomically; ``obj`` must load back with ``weights_only=True``."""
    import torch

    check_weights_only(obj)
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def load_torch(path: str, *, allow_pickle: bool = False, map_location="cpu"):
    """Load a torch file without executing code; ``allow_pickle=True`` is the explicit opt-in
    for files you trust that hold arbitrary Python objects.

    Errors are ``CheckpointError`` (a ValueError) naming the file; a missing file is
    FileNotFoundError.
    """
    import pickle
    import zipfile

    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (not a torch checkpoint)")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        # torch.save writes a zip archive; anything else the weights-only unpickler refuses is garbage
        if not allow_pickle and "Weights only load failed" in str(exc) and zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: holds Python objects that a weights-only load refuses "
                                  f"(it would execute code); if you trust the file, pass "
                                  f"allow_pickle=True") from None
        raise CheckpointError(f"{path}: corrupt or not a torch checkpoint ({_first_line(exc)})") from None
    except PermissionError:
        raise
    except Exception as exc:  # torch raises KeyError/RuntimeError/EOFError/... on garbage and truncation
        raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# -- folders ----------------------------------------------------------------------
def _fsync_tree(root: str) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def replace_dir(src: str, dst: str) -> None:
    """Move the finished folder ``src`` to ``dst`` (same parent), replacing any old ``dst``.

    A folder cannot be renamed over a non-empty one, so an old ``dst`` is first
    renamed aside, the new one renamed in, then the old removed. A crash between
    the two renames leaves the old folder as ``.NAME.old-*`` next to ``dst``.
    """
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    parent = os.path.dirname(dst)
    if os.path.dirname(src) != parent:
        raise ValueError(f"replace_dir needs src and dst in the same folder, got {src} and {dst}")
    aside = None
    if os.path.lexists(dst):
        if not os.path.isdir(dst) or os.path.islink(dst):
            raise FileExistsError(f"{dst} exists and is not a folder")
        aside = _new_temp_dir(parent, os.path.basename(dst), "old")
        os.rmdir(aside)  # a free name to rename the old folder to
        os.rename(dst, aside)
    os.rename(src, dst)
    fsync_dir(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temp folder next to ``path``; fill it, and on a clean exit it replaces ``path``.

    Every file in it is fsynced before the rename. On an exception the temp folder
    is removed and ``path`` is untouched.
    """
    parent, name = _split(path)
    tmp = _new_temp_dir(parent, name, "new")
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, os.path.join(parent, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
