"""Small networks that backpropagation cannot train, for the demo and tests."""
from __future__ import annotations

import torch
from torch import nn


class FloorStep(nn.Module):
    """Step activation ``clamp(floor(x), 0, levels)``: piecewise constant, so its
    gradient is zero almost everywhere and backprop leaves the weights unchanged."""

    def __init__(self, levels: int = 4):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.floor(x), 0, self.levels)


class StepMLP(nn.Module):
    """``in -> hidden (floor steps) -> classes``; the demo's network."""

    def __init__(self, n_in: int = 64, hidden: int = 32, n_out: int = 10, levels: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = FloorStep(levels)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
