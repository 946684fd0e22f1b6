"""The CUDA sources shipped in this package and the kernels each must define.

Kept free of CuPy so that CPU-only machines (and CI) can compile and check them.
"""
from __future__ import annotations

from importlib import resources
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
    """The folder holding the ``.cu`` files and ``philox.cuh``."""
    return Path(str(resources.files(__package__)))


def read_source(name: str) -> str:
    """Kernel file ``name`` with ``philox.cuh`` inlined: what NVRTC compiles."""
    if name not in KERNELS:
        raise ValueError(f"name must be one of {sorted(KERNELS)}, got {name!r}")
    folder = source_dir()
    header = (folder / HEADER).read_text()
    return (folder / name).read_text().replace(f'#include "{HEADER}"', header)
