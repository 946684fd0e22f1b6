"""Train a torch module with any ask/tell strategy over its flat parameter vector.

The facade contract of ``zoopt.PolyStep(model)`` and ``zoopt.EGGROLL(model)``:
the strategy + a :class:`~zoopt.problems.ModuleProblem` + an evaluator
(``"local"``, ``"ray"`` or an evaluator object). ``step(batch, loss_fn)``
takes ``(x, y)`` tensors, which travel with the generation's spec, or three
ints ``(epoch, k, batch_size)`` naming rows of ``data`` through
:func:`zoopt.problems.epoch_order` (seeded by ``data_seed``), so an actor
that holds the training split receives only those ints.

Learning rate: for a strategy whose center is moved by a torch optimizer
(``openai_es``), :attr:`StrategyModule.optimizer` is that optimizer, so
``StepLR(opt.optimizer, ...)`` scales the step taken along the gradient
estimate; its state (lr included) is in the strategy's state dict.
Strategies without one (CMA-ES, SPSA) have no learning rate to drive.
"""
from __future__ import annotations


import torch

from zoopt.problems.module import BATCH_KEY, ModuleProblem, batch_entry, load_flat, same_loss


class ModelDeviceProblem(ModuleProblem):
    """Strategies keep their center on the CPU; the model (and the batch) may live on another device."""

    def member_losses(self, params, x, y):
        return super().member_losses({k: v.to(x.device) for k, v in params.items()}, x, y).cpu()


class StrategyModule:
    """``strategy`` (an ask/tell :class:`~zoopt.strategy.Strategy` whose center is the model's flat
    trainable parameters) training ``model`` in place, one generation per :meth:`step`."""

    def __init__(self, model: torch.nn.Module, strategy, *, evaluator=None, evaluator_options: dict | None = None,
                 data=None, data_seed: int = 0, chunk: int = 64):
        from zoopt.workers import make_evaluator

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if data is not None and (not isinstance(data, (tuple, list)) or len(data) != 2):
            raise TypeError("data must be None or a pair (x, y) of tensors")
        self.model, self.strategy, self.name = model, strategy, strategy.name
        self.data, self.data_seed, self.chunk = data, int(data_seed), int(chunk)
        self.owns_evaluator = evaluator is None or isinstance(evaluator, str)
        self.evaluator = make_evaluator(evaluator, **(evaluator_options or {}))
        self.problem, self.problem_loss = None, None
        self.evaluations = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer that moves the strategy's center (its ``lr`` scales the gradient step)."""
        optimizer = getattr(self.strategy, "optimizer", None)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise AttributeError(f"{self.name} is not moved by a torch optimizer: it has no learning rate "
                                 "a torch LR scheduler can drive")
        return optimizer

    @property
    def param_groups(self) -> list:
        """``optimizer.param_groups``: ``[0]["lr"]`` is the learning rate a torch LR scheduler drives."""
        return self.optimizer.param_groups

    def _problem(self, loss_fn, batch) -> ModuleProblem:
        """One problem per loss function: an evaluator ships it to its actors once."""
        if self.problem is None or not same_loss(loss_fn, self.problem_loss):
            data = self.data if self.data is not None else (batch[0][:1], batch[1][:1])
            self.problem = ModelDeviceProblem(self.model, loss_fn, tuple(data), seed=self.data_seed, chunk=self.chunk)
            self.problem_loss = loss_fn
        return self.problem

    def step(self, batch, loss_fn) -> float:
        """One generation on ``batch``; returns the members' mean loss."""
        entry = batch_entry(batch, self.data is not None, f"this {self.name} optimizer")
        problem = self._problem(loss_fn, entry)
        spec = self.strategy.ask()
        spec.extras[BATCH_KEY] = entry
        fitness = self.evaluator(problem, spec)
        self.strategy.tell(fitness)
        self.evaluations += spec.popsize
        load_flat(self.model, self.strategy.center)
        return float(fitness.mean())

    def state_dict(self) -> dict:
        return {"name": self.name, "strategy": self.strategy.state_dict(), "evaluations": self.evaluations}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state_dict is for {state.get('name')!r}, not {self.name!r}")
        self.strategy.load_state_dict(state["strategy"])
        self.evaluations = int(state["evaluations"])
        load_flat(self.model, self.strategy.center)

    def close(self) -> None:
        if self.owns_evaluator and hasattr(self.evaluator, "close"):
            self.evaluator.close()


__all__ = ["StrategyModule", "ModelDeviceProblem"]
