"""Single-process HDET: N replicas simulated exactly on one device (research note A.7).

All replicas apply the same averaged gradient, so inside a window with fixed multipliers
θ_r = θ_anchor − ρ_r·U with U = θ_anchor − θ_mean, per param group. ``mode="line"`` keeps only
θ_anchor and the mean replica θ_mean (the model itself): per step it materialises each replica,
runs its forward/backward on its own micro-batch, accumulates the gradients, restores θ_mean and
lets the optimizer take one step at the base LR. A sync sets θ_anchor ← θ_mean. Memory: about two
parameter copies plus the gradients; compute: N forward/backward passes per step.

The line structure needs an update direction identical for every replica, so it excludes weight
decay (coupled or decoupled: both depend on θ_r) and turning averaging off while the controller
reshuffles multipliers. ``mode="copies"`` keeps N full model/optimizer copies instead and is exact
for any optimizer (N× memory).

Warm noisy initialisation (``init_noise`` ν > 0): replica r starts at θ̄ + ε_r with the same ε_r
the distributed scheduler's rank r draws. In line mode the replicas then sit at
θ_anchor + d_r − ρ_r·U with d_r = ε_r − mean(ε) (the update never changes d_r), so the offsets
are kept until the first averaging folds them into the mean.
"""
from __future__ import annotations

import copy

import torch

from zoopt.hdet.ensemble import EnsembleSchedule
from zoopt.hdet.schedule import OneCycleCurve
from zoopt.hdet.warm_init import perturb_, warm_noise

MODES = ("line", "copies")


class HDETSimulation:
    """Simulate ``num_replicas`` HDET ranks in one process.

    ``model``/``optimizer`` are the user's (replica 0 in ``"copies"`` mode, the mean replica in
    ``"line"`` mode). The OneCycle and HDET keyword arguments are those of
    :class:`zoopt.HDETOneCycleLR`. Each :meth:`step` takes N micro-batches (replica r gets
    ``batches[r]``, as rank r would) and ``loss_fn(model, batch) -> scalar loss``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, num_replicas: int, max_lr,
                 total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3, anneal_strategy="cos",
                 cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, *, mode="line", spread=0.1, sync_every=1000,
                 auto_lr=True, auto_lr_start=None, average=True, temperature=0.1, meta_lr=0.5, momentum=0.9,
                 lr_floor=None, perm_seed=1024, init_noise=0.0, init_seed=0, hyperparams=(),
                 spread_before_auto_lr=True, schedule_after_start="controller"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        self.model, self.optimizer, self.mode, self.n = model, optimizer, mode, num_replicas
        self.curve = OneCycleCurve(len(optimizer.param_groups), max_lr, total_steps, epochs, steps_per_epoch,
                                   pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum,
                                   div_factor, final_div_factor, three_phase)
        self.cycle_momentum = cycle_momentum
        if cycle_momentum and "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
            raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
        self.ensemble = EnsembleSchedule(num_replicas, self.curve, spread, sync_every, auto_lr, auto_lr_start,
                                         average, temperature, meta_lr, momentum, lr_floor, perm_seed,
                                         hyperparams, spread_before_auto_lr, schedule_after_start)
        if mode == "line":
            if any(g.get("weight_decay", 0) for g in optimizer.param_groups) or any(
                    h.name == "weight_decay" for h in hyperparams):
                raise ValueError("mode='line' cannot simulate weight decay (it depends on each replica's θ); "
                                 "use mode='copies'")
            if auto_lr and not average:
                raise ValueError("mode='line' needs average=True when auto_lr reshuffles multipliers; "
                                 "use mode='copies'")
            self.offsets = self._warm_offsets(init_noise, init_seed)
            self.anchor = [p.detach().clone() for p in self._params(optimizer)]
        else:
            if hyperparams:
                raise ValueError("mode='copies' does not support explored hyperparameters; use mode='line'")
            self.replicas = [(model, optimizer)] + [copy.deepcopy((model, optimizer)) for _ in range(num_replicas - 1)]
            for r, (_, opt) in enumerate(self.replicas):
                perturb_(self._params(opt), init_noise, r, init_seed)
        self._loss_sum = torch.zeros(num_replicas, dtype=torch.float64)
        self._loss_count = 0
        self.history = []

    @staticmethod
    def _params(optimizer):
        return [p for g in optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def _warm_offsets(self, nu, seed):
        """Line mode: move the model to θ̄ + mean(ε) and return d_r = ε_r − mean(ε) (None if ν = 0)."""
        params = self._params(self.optimizer)
        noise = [warm_noise(params, nu, r, seed) for r in range(self.n)]    # checks ν and seed
        if nu == 0:
            return None
        mean = [torch.stack(parts).mean(0) for parts in zip(*noise)]
        for p, m in zip(params, mean):
            p.add_(m)
        return [[e - m for e, m in zip(eps, mean)] for eps in noise]

    def lrs(self) -> torch.Tensor:
        """``[N, G]`` LR of every replica and param group for the next step."""
        return self.ensemble.lrs()

    def _set_group(self, optimizer, lrs):
        momenta = self.ensemble.momentum() if self.cycle_momentum else None
        for g, group in enumerate(optimizer.param_groups):
            group["lr"] = float(lrs[g])
            if momenta is not None:
                if "betas" in group:
                    group["betas"] = (momenta[g], *group["betas"][1:])
                else:
                    group["momentum"] = momenta[g]

    def _line_point(self, replica: int, mult: torch.Tensor, mean: list) -> list[torch.Tensor]:
        """θ_r = θ_anchor − ρ_r·(θ_anchor − θ_mean) (+ d_r while warm-init offsets remain)."""
        out, i = [], 0
        for g, group in enumerate(self.optimizer.param_groups):
            m = float(mult[replica, g])
            for _ in group["params"]:
                a = self.anchor[i]
                point = a - m * (a - mean[i].detach())
                out.append(point if self.offsets is None else point + self.offsets[replica][i])
                i += 1
        return out

    @torch.no_grad()
    def _materialise(self, replica: int, mult: torch.Tensor, mean: list):
        for p, point in zip(self._params(self.optimizer), self._line_point(replica, mult, mean)):
            p.copy_(point)

    def replica_parameters(self, replica: int) -> list[torch.Tensor]:
        """Current parameters of one replica (flat list in optimizer order)."""
        if self.mode == "copies":
            return [p.detach().clone() for p in self._params(self.replicas[replica][1])]
        with torch.no_grad():
            return self._line_point(replica, self.ensemble.multipliers(), self._params(self.optimizer))

    def step(self, batches, loss_fn, heldout_fn=None) -> torch.Tensor:
        """One data-parallel step of all replicas; returns their losses ``[N]``.

        ``heldout_fn(model) -> scalar`` is evaluated for every replica (its parameters and
        explored values in place, no gradient) on the last step of each window; scalars explored
        with ``signal="heldout"`` read it.
        """
        if len(batches) != self.n:
            raise ValueError(f"batches: expected {self.n} micro-batches (one per replica), got {len(batches)}")
        ens = self.ensemble
        lrs_used = ens.lrs()
        losses = self._step_line(batches, loss_fn, lrs_used) if self.mode == "line" else \
            self._step_copies(batches, loss_fn, lrs_used)
        self._loss_sum += losses
        self._loss_count += 1
        heldout = None
        if heldout_fn is not None and (ens.t + 1) % ens.sync_every == 0 and ens.controller_active(ens.t + 1):
            heldout = self._heldout(heldout_fn)
        if ens.advance():
            self._sync(lrs_used, heldout)
        return losses

    @torch.no_grad()
    def _heldout(self, heldout_fn) -> torch.Tensor:
        out = torch.empty(self.n, dtype=torch.float64)
        if self.mode == "copies":
            for r, (model, _) in enumerate(self.replicas):
                out[r] = float(heldout_fn(model))
            return out
        params = self._params(self.optimizer)
        mean = [p.detach().clone() for p in params]
        mult = self.ensemble.multipliers()
        for r in range(self.n):
            self._materialise(r, mult, mean)
            self.ensemble.apply_hyperparams(r)
            out[r] = float(heldout_fn(self.model))
        for p, m in zip(params, mean):
            p.copy_(m)
        return out

    def _step_line(self, batches, loss_fn, lrs_used):
        ens, params = self.ensemble, self._params(self.optimizer)
        mult = ens.multipliers()
        mean = [p.detach().clone() for p in params]
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.empty(self.n, dtype=torch.float64)
        for r in range(self.n):
            self._materialise(r, mult, mean)
            ens.apply_hyperparams(r)
            loss = loss_fn(self.model, batches[r])
            loss.backward()
            losses[r] = float(loss.detach())
        with torch.no_grad():
            for p, m in zip(params, mean):
                p.copy_(m)
                if p.grad is not None:
                    p.grad.div_(self.n)
        self._set_group(self.optimizer, ens.base_lr())
        self.optimizer.step()
        return losses

    def _step_copies(self, batches, loss_fn, lrs_used):
        losses = torch.empty(self.n, dtype=torch.float64)
        for r, (model, opt) in enumerate(self.replicas):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batches[r])
            loss.backward()
            losses[r] = float(loss.detach())
        per_replica = [self._params(opt) for _, opt in self.replicas]
        with torch.no_grad():
            for tensors in zip(*per_replica):
                grads = [p.grad for p in tensors]
                if any(g is None for g in grads):
                    continue
                avg = torch.stack(grads).sum(0).div_(self.n)
                for g in grads:
                    g.copy_(avg)
        for r, (_, opt) in enumerate(self.replicas):
            self._set_group(opt, lrs_used[r])
            opt.step()
        return losses

    @torch.no_grad()
    def _sync(self, lrs_used, heldout=None):
        ens = self.ensemble
        if ens.average:
            if self.mode == "line":
                self.anchor = [p.detach().clone() for p in self._params(self.optimizer)]
                self.offsets = None
            else:
                for tensors in zip(*[self._params(opt) for _, opt in self.replicas]):
                    avg = torch.stack([p.data for p in tensors]).sum(0).div_(self.n)
                    for p in tensors:
                        p.data.copy_(avg)
        if ens.controller_active():
            window = self._loss_sum / max(self._loss_count, 1)
            info = ens.controller_sync(lrs_used, window, heldout)
            self.history.append({"step": ens.t, "losses": window.tolist(),
                                 **{k: v.tolist() for k, v in info.items()}})
        self._loss_sum.zero_()
        self._loss_count = 0

    def state_dict(self) -> dict:
        """Ensemble state, window accumulators and the anchor / replica copies (user's model and
        optimizer are saved by the user as usual)."""
        state = {"ensemble": self.ensemble.state_dict(), "loss_sum": self._loss_sum.clone(),
                 "loss_count": self._loss_count, "history": list(self.history), "mode": self.mode}
        if self.mode == "line":
            state["anchor"] = [a.clone() for a in self.anchor]
            state["offsets"] = None if self.offsets is None else [[d.clone() for d in o] for o in self.offsets]
        else:
            state["replicas"] = [(copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict()))
                                 for m, o in self.replicas[1:]]
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"state was saved in mode {state['mode']!r}, this simulation uses {self.mode!r}")
        self.ensemble.load_state_dict(state["ensemble"])
        self._loss_sum = state["loss_sum"].clone()
        self._loss_count = state["loss_count"]
        self.history = list(state["history"])
        if self.mode == "line":
            self.anchor = [a.clone() for a in state["anchor"]]
            self.offsets = None if state["offsets"] is None else [[d.clone() for d in o] for o in state["offsets"]]
        else:
            for (m, o), (ms, os_) in zip(self.replicas[1:], state["replicas"]):
                m.load_state_dict(ms)
                o.load_state_dict(os_)
