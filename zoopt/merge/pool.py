"""A pool of LoRA adapters in PEFT format, stacked per target module.

Each adapter is a folder with ``adapter_config.json`` and
``adapter_model.safetensors`` (keys ``<module>.lora_A.weight`` [r, d_in] and
``<module>.lora_B.weight`` [d_out, r]). All adapters must share rank, alpha
and target modules.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterPool:
    names: list                   # adapter names, in pool order
    config: dict                  # the shared PEFT LoRA config (r, lora_alpha, target_modules, ...)
    A: dict                       # module -> [N, r, d_in]
    B: dict                       # module -> [N, d_out, r]
    sorted_abs_A: dict = field(default_factory=dict)  # module -> [N, numel] |A| descending, for top-k

    def __post_init__(self):
        for module, a in self.A.items():
            self.sorted_abs_A[module] = a.reshape(a.shape[0], -1).abs().sort(dim=1, descending=True).values

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def modules(self) -> list:
        return list(self.A)

    @property
    def scaling(self) -> float:
        return float(self.config["lora_alpha"]) / float(self.config["r"])

    def subset(self, names) -> "AdapterPool":
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"adapters not in the pool: {missing}")
        idx = torch.tensor([self.names.index(n) for n in names])
        return AdapterPool(list(names), self.config, {m: a[idx] for m, a in self.A.items()},
                           {m: b[idx] for m, b in self.B.items()})


def read_adapter(folder: str):
    """(config, {module: (A, B)}) of one PEFT adapter folder."""
    for name in (CONFIG, WEIGHTS):
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"{folder} is not a PEFT LoRA adapter: {name} is missing")
    with open(os.path.join(folder, CONFIG)) as fh:
        config = json.load(fh)
    tensors = load_file(os.path.join(folder, WEIGHTS))
    factors = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                factors.setdefault(module, {})[part] = value.float()
    bad = [m for m, f in factors.items() if set(f) != {"lora_A", "lora_B"}]
    if bad or not factors:
        raise ValueError(f"{folder}: modules without both lora_A and lora_B: {bad or 'none found'}")
    return config, {m: (f["lora_A"], f["lora_B"]) for m, f in factors.items()}


def load_pool(folder: str) -> AdapterPool:
    """Every adapter sub-folder of ``folder`` (sorted by name)."""
    names = sorted(d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, CONFIG)))
    if not names:
        raise FileNotFoundError(f"no PEFT adapters (sub-folders with {CONFIG}) in {folder}")
    configs, factors = [], []
    for name in names:
        config, f = read_adapter(os.path.join(folder, name))
        configs.append(config)
        factors.append(f)
    keys = ("r", "lora_alpha")
    for name, config, f in zip(names, configs, factors):
        if any(config.get(k) != configs[0].get(k) for k in keys) or set(f) != set(factors[0]):
            raise ValueError(f"adapter {name} differs from {names[0]} in rank, alpha or target modules")
    modules = sorted(factors[0])
    A = {m: torch.stack([f[m][0] for f in factors]) for m in modules}
    B = {m: torch.stack([f[m][1] for f in factors]) for m in modules}
    return AdapterPool(names, configs[0], A, B)


def save_adapter(folder: str, config: dict, factors: dict) -> None:
    """Write ``{module: (A, B)}`` as a PEFT adapter folder."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"{module}.lora_A.weight"] = a.contiguous().float()
        tensors[f"{module}.lora_B.weight"] = b.contiguous().float()
    save_file(tensors, os.path.join(folder, WEIGHTS))
    with open(os.path.join(folder, CONFIG), "w") as fh:
        json.dump(config, fh, indent=1)
