"""The torch.optim optimizer that moves a strategy's center along its gradient estimate."""
from __future__ import annotations

import torch

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(name, params, lr: float, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    """``name`` is "sgd", "adam", "adamw", or a torch.optim.Optimizer class."""
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if isinstance(name, str):
        if name.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)} or a torch.optim class, got {name!r}")
        cls = OPTIMIZERS[name.lower()]
    elif isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        cls = name
    else:
        raise TypeError(f"optimizer must be a name or a torch.optim.Optimizer subclass, got {name!r}")
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
