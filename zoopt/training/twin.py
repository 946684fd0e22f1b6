"""The differentiable ceiling: Adam by backprop on a zoo model's smooth twin.

The hard model holds the same weights after every step, so both can be scored
(``eval_models``: the hard model and ``twin_``).
"""
from __future__ import annotations

import torch


class TwinAdam:
    name = "adam"

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3):
        from zoopt.problems.zoo import smooth_twin

        self.model = model
        self.twin = smooth_twin(model)
        self.eval_models = {"": model, "twin_": self.twin}
        self.opt = torch.optim.Adam(self.twin.parameters(), lr=lr)
        self.evaluations = 0

    def step(self, batch, loss_fn) -> float:
        x, y = batch
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn(self.twin(x), y)
        loss.backward()
        self.opt.step()
        self.evaluations += 1
        with torch.no_grad():
            for p, q in zip(self.model.parameters(), self.twin.parameters()):
                p.copy_(q)
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"name": self.name, "adam": self.opt.state_dict(), "twin": self.twin.state_dict(),
                "evaluations": self.evaluations}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state_dict is for {state.get('name')!r}, not {self.name!r}")
        self.twin.load_state_dict(state["twin"])
        self.opt.load_state_dict(state["adam"])
        self.evaluations = int(state["evaluations"])


__all__ = ["TwinAdam"]
