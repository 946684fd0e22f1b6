"""Build and load a compiled CPU helper (a C file of ``kernels/``) once per cache folder.

The library is compiled with the system C compiler into ``$ZOOPT_CACHE`` (or
``~/.cache/zoopt``), keyed by a hash of its source and flags, and loaded with
ctypes. No ``-march=native``: a cached library may be loaded on another CPU
that shares the home folder (an illegal instruction would kill the process).
Each library tries its flag sets in order (the first usually adds SIMD clones
chosen at load time) and is unavailable, so callers use torch, when no set
builds, when ``ZOOPT_NO_CEXT`` is set, or when its ``declare`` fails.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
from typing import Callable, Optional, Sequence

from .sources import source_dir


def cache_dir() -> str:
    return os.environ.get("ZOOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zoopt")


def compile_source(name: str, source: str, flags: Sequence[str]) -> str:
    """Path of ``name``'s shared library for ``source`` and ``flags``, compiled if not cached."""
    digest = hashlib.sha256((source + " ".join(flags)).encode()).hexdigest()[:16]
    folder = cache_dir()
    path = os.path.join(folder, f"{name}_{digest}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        cc = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = os.path.join(tmp, f"{name}.c")
            with open(src, "w") as fh:
                fh.write(source)
            tmp_so = os.path.join(tmp, f"{name}.so")
            subprocess.run([cc, *flags, src, "-o", tmp_so], check=True, capture_output=True, timeout=120)
            os.replace(tmp_so, path)  # atomic: concurrent builders never see a torn file
    return path


class CLibrary:
    """``kernels/<name>.c`` built on first use; ``declare(lib)`` sets the functions' ctypes signatures."""

    def __init__(self, name: str, flag_sets: Sequence[Sequence[str]], declare: Callable[[ctypes.CDLL], None]):
        self.name, self.flag_sets, self.declare = name, [list(f) for f in flag_sets], declare
        self.source = (source_dir() / f"{name}.c").read_text()
        self._lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self._tried = False

    def _build(self) -> ctypes.CDLL:
        error = None
        for flags in self.flag_sets:
            try:
                lib = ctypes.CDLL(compile_source(self.name, self.source, flags))
                break
            except (OSError, subprocess.SubprocessError) as exc:
                error = exc
        else:
            raise error
        self.declare(lib)
        return lib

    def available(self) -> bool:
        """True when the compiled library loads (built on first use)."""
        if os.environ.get("ZOOPT_NO_CEXT"):
            return False
        if not self._tried:
            with self._lock:
                if not self._tried:
                    try:
                        self._lib = self._build()
                    except (OSError, AttributeError, subprocess.SubprocessError):
                        self._lib = None
                    self._tried = True
        return self._lib is not None

    @property
    def lib(self) -> ctypes.CDLL:
        """The loaded library (call :meth:`available` first)."""
        return self._lib


__all__ = ["CLibrary", "cache_dir", "compile_source"]
