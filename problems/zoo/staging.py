"""Helpers for the stage protocol of the zoo models (see ``problems.zoo.models``)."""
from __future__ import annotations

import torch


def model_stages(model) -> list:
    """``model.stages()``, checked: a list of ``(name, module)`` with distinct names."""
    if not hasattr(model, "stages"):
        raise TypeError(f"{type(model).__name__} has no stages(); zoo models do (problems.zoo.models)")
    stages = list(model.stages())
    names = [n for n, _ in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be distinct, got {names}")
    return stages


def stage_of_parameters(model) -> dict:
    """``{model parameter name: index of the stage that owns it}``."""
    owner = {}
    for k, (name, module) in enumerate(model_stages(model)):
        for local, _ in module.named_parameters():
            owner[f"{name}.{local}"] = k
    return owner


def stage_inputs(model, x: torch.Tensor) -> list:
    """Inputs of every stage for the current weights: ``[x.flatten(1), h_1, ..., h_n]``.

    Entry k is what stage k receives, the last entry is the model output; a
    candidate perturbing stage k starts from entry k.
    """
    h = x.flatten(1)
    out = [h]
    for _, module in model_stages(model):
        h = module(h)
        out.append(h)
    return out


def run_stages(model, h: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Apply stages ``start..end`` to ``h`` (the input of stage ``start``)."""
    for _, module in model_stages(model)[start:]:
        h = module(h)
    return h
