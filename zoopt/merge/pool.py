"""A pool of LoRA adapters in PEFT format, stacked per target module.

Each adapter is a folder as PEFT's ``save_pretrained`` writes it
(``adapter_config.json`` and ``adapter_model.safetensors``, or the older
``adapter_model.bin``), read through PEFT (``LoraConfig.from_pretrained``,
``load_peft_weights``): keys ``<module>.lora_A.weight`` [r, d_in] and
``<module>.lora_B.weight`` [d_out, r]. All adapters must share rank, alpha and
target modules. Merged adapters are written back the same way, with PEFT's full
config (``base_model_name_or_path``, ``task_type``), so
``PeftModel.from_pretrained(base, folder)`` loads them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
LEGACY_WEIGHTS = "adapter_model.bin"
TASK_TYPE = "CAUSAL_LM"


def lora_config(config, **overrides):
    """A PEFT ``LoraConfig`` from a LoraConfig or a dict of its fields (``task_type``
    defaults to causal LM); refuses the LoRA variants this merge operator does not model."""
    from peft import LoraConfig

    if isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        config = LoraConfig(**{k: v for k, v in config.items() if k in known and k != "peft_type"})
    config = dataclasses.replace(config, **overrides)
    if config.task_type is None:
        config.task_type = TASK_TYPE
    if config.use_dora or config.rank_pattern or config.alpha_pattern or config.bias != "none":
        raise ValueError("adapters with DoRA, trained biases or per-module rank/alpha patterns are not "
                         "supported (the merge adds A and B factors of one rank and scale)")
    return config


@dataclass
class AdapterPool:
    names: list                   # adapter names, in pool order
    config: object                # the shared peft.LoraConfig (r, lora_alpha, target_modules, ...)
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
        """What PEFT multiplies B A by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        r = float(self.config.r)
        return float(self.config.lora_alpha) / (r ** 0.5 if self.config.use_rslora else r)

    def subset(self, names) -> "AdapterPool":
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"adapters not in the pool: {missing}")
        idx = torch.tensor([self.names.index(n) for n in names])
        return AdapterPool(list(names), self.config, {m: a[idx] for m, a in self.A.items()},
                           {m: b[idx] for m, b in self.B.items()})


def read_adapter(folder: str):
    """(LoraConfig, {module: (A, B)}) of one PEFT adapter folder, read through PEFT."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    if not os.path.isfile(os.path.join(folder, CONFIG)):
        raise FileNotFoundError(f"{folder} is not a PEFT LoRA adapter: {CONFIG} is missing")
    if not any(os.path.isfile(os.path.join(folder, w)) for w in (WEIGHTS, LEGACY_WEIGHTS)):
        raise FileNotFoundError(f"{folder} is not a PEFT LoRA adapter: {WEIGHTS} is missing")
    try:
        config = lora_config(LoraConfig.from_pretrained(folder))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{os.path.join(folder, CONFIG)}: not a PEFT LoRA config ({exc})") from None
    try:
        tensors = load_peft_weights(folder, device="cpu")  # .bin files load weights-only
    except Exception as exc:  # safetensors and torch raise many types on a corrupt file
        raise ValueError(f"{folder}: unreadable adapter weights ({type(exc).__name__}: {exc})") from None
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
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"adapter pool {folder}: no such folder")
    names = sorted(d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, CONFIG)))
    if not names:
        raise FileNotFoundError(f"no PEFT adapters (sub-folders with {CONFIG}) in {folder}")
    configs, factors = [], []
    for name in names:
        config, f = read_adapter(os.path.join(folder, name))
        configs.append(config)
        factors.append(f)
    first = configs[0]
    for name, config, f in zip(names, configs, factors):
        if (config.r, config.lora_alpha, config.use_rslora) != (first.r, first.lora_alpha, first.use_rslora) \
                or set(f) != set(factors[0]):
            raise ValueError(f"adapter {name} differs from {names[0]} in rank, alpha or target modules")
    modules = sorted(factors[0])
    A = {m: torch.stack([f[m][0] for f in factors]) for m in modules}
    B = {m: torch.stack([f[m][1] for f in factors]) for m in modules}
    return AdapterPool(names, first, A, B)


def save_adapter(folder: str, config, factors: dict, base_model: str | None = None) -> None:
    """Write ``{module: (A, B)}`` as a PEFT adapter folder: the config through PEFT's
    ``save_pretrained`` (``base_model`` fills ``base_model_name_or_path`` when given),
    the weights in PEFT's safetensors layout."""
    config = lora_config(config)
    if base_model is not None:
        config.base_model_name_or_path = base_model
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"{module}.lora_A.weight"] = a.contiguous().float()
        tensors[f"{module}.lora_B.weight"] = b.contiguous().float()
    save_file(tensors, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
