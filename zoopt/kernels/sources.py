"""The CUDA sources shipped in this package and the kernels each must define.

Kept free of CuPy so that CPU-only machines (and CI) can compile and check them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

HEADER = "philox.cuh"

# source file -> extern "C" kernels it defines (cupy_backend launches them by these names)
KERNELS: Dict[str, Tuple[str, ...]] = {
    "noise.cu": ("keyed_raw_bits", "keyed_normal_f32", "keyed_normal_bf16"),
    "int_noise.cu": ("keyed_int8",),
    "rotations.cu": ("haar_rotations_f32", "vertex_offsets_f32"),
    "lowrank.cu": tuple(f"lowrank_correction_{t}_r{r}" for t in ("f32", "bf16") for r in (1, 2, 4)),
}


def source_dir() -> Path:
    """The folder holding the kernel sources (``.cu``, ``philox.cuh``, ``philox.c``).

    Installed, they are package data in ``zoopt/kernels/src``; in a source
    checkout (and an editable install) they are the repo's top-level ``kernels/``,
    which holds no Python so that it never shadows an installed ``kernels`` package.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "src", here.parents[1] / "kernels"):
        if (folder / HEADER).is_file():
            return folder
    raise FileNotFoundError(f"kernel sources ({HEADER}) not found next to {here} or in the repo's kernels/")


def read_source(name: str) -> str:
    """Kernel file ``name`` with ``philox.cuh`` inlined: what NVRTC compiles."""
    if name not in KERNELS:
        raise ValueError(f"name must be one of {sorted(KERNELS)}, got {name!r}")
    folder = source_dir()
    header = (folder / HEADER).read_text()
    return (folder / name).read_text().replace(f'#include "{HEADER}"', header)
