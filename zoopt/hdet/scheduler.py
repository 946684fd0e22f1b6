"""``HDETOneCycleLR``: a drop-in OneCycleLR that explores learning rates across data-parallel ranks."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

from zoopt.hdet.ensemble import EnsembleSchedule
from zoopt.hdet.permutation import check_same_on_all_ranks
from zoopt.hdet.schedule import OneCycleCurve
from zoopt.hdet.sync import all_gather_rows, average_parameters, collective_device, rank_and_world
from zoopt.hdet.warm_init import perturb_, warm_noise

NONFINITE_POLICIES = ("drop", "raise", "ignore")


class HDETOneCycleLR(LRScheduler):
    """OneCycleLR with HDET's fan-out / converge / auto-LR (Cheng et al. 2026).

    Every rank of a data-parallel job (gradients all-reduced as usual, e.g. by DDP) trains its
    own parameter copy with LR ``ρ_{π_g(rank)} · η̄_g(t)``: the OneCycle curve scaled by this
    rank's multiplier from step 0 (``initial_lr``, ``max_lr`` and ``min_lr`` of each group are
    scaled by ρ). Every ``sync_every`` steps the parameters are averaged over ranks, and from
    ``auto_lr_start`` on the zero-order controller moves each group's base LR towards the
    multipliers whose replicas had the lower mean training loss, then redraws π.

    Drop-in: with one process (no process group, or a group of one) or ``spread=0`` there is
    nothing to explore, and the LR and momentum are exactly ``torch.optim.lr_scheduler.OneCycleLR``'s
    at every step, for every OneCycle argument (``last_epoch=k`` resumes at step k + 1, as torch).

    OneCycleLR arguments (same meaning): ``max_lr, total_steps, epochs, steps_per_epoch,
    pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum, div_factor,
    final_div_factor, three_phase, last_epoch``.

    HDET arguments:
        spread: α, multipliers ρ_r = 1 + α(r − (N−1)/2)/max((N−1)/2, ½) in [1−α, 1+α], 0 ≤ α < 1
            (paper 1/9 with 8 ranks).
        sync_every: T, steps between parameter averagings / controller updates.
        auto_lr: switch for the controller. auto_lr_start: S_warm, the step from which it runs
            (default: the end of OneCycle's rising phase).
        average: switch for parameter averaging (independent of ``auto_lr``).
        temperature: softmax temperature σ on window-mean loss differences (paper 0.1; the
            released code used 0.002). meta_lr: λ. momentum: β.
        lr_floor: float or one per group: where the 'controller' schedule ends. From
            ``auto_lr_start`` the base LR decays by γ per sync, γ = 1 − (floor/η̄_start)^(1/K), K =
            the controller syncs whose new LR a step still uses (a sync at t = total_steps is not
            counted), so without a signal the last LR used is the floor; the floor also bounds the
            controller from below. Default: 0.22·η̄_start (η̄_start is the peak with the default
            start), the residual LR the paper reports for its run (about 2e-4 at a 9e-4 peak).
            Alternatives, and why not: OneCycle's ``min_lr`` (max_lr/250,000 with the default
            factors) anneals the exploration away; the paper's Eq. 6, γ = 1 − exp(−ln(f_div/
            f_final)/K), has a sign error (with the defaults it grows the LR 400×: the released
            code does this); with the sign corrected it decays by f_final/f_div (to η̄_start/400),
            and in this project's tuning runs low floors lost: 0.003·peak scored 0.10 nats/byte
            worse than 0.03·peak (``scripts/bench_hdet.py`` TUNING_LOG). 0 ≤ γ < 1 is checked.
        perm_seed: seed of the dedicated generator that draws the permutations (same on all ranks).
        init_noise: ν of the warm noisy initialisation (paper Eq. 9, ν = 0.01 in "HDET full";
            default 0, off): at construction (``last_epoch=-1`` only) every rank adds its own noise
            of per-tensor std ν·RMS(p) to ``params``, drawn from a stream keyed by (init_seed,
            rank); see :mod:`zoopt.hdet.warm_init`. Build the scheduler after loading a checkpoint.
        params: tensors to average (default: every parameter in the optimizer).
        hyperparams: :class:`zoopt.hdet.hyperparams.ExploredScalar` values explored alongside.
        spread_before_auto_lr: paper True; False reproduces the released code, whose spread
            stays inert until the first controller sync.
        schedule_after_start: ``"controller"`` (base LR only changes at syncs, decaying by γ: paper
            and code) or ``"onecycle"`` (the OneCycle curve keeps running, scaled by a factor the
            controller adjusts).
        nonfinite: ``"drop"`` leaves replicas whose parameters or window loss are non-finite out of
            the average (the controller already gives them weight 0); ``"raise"``; ``"ignore"``.
        verify_permutations: all-gather π at each sync and raise PermutationMismatchError on mismatch.
        process_group: torch.distributed group (default: the world).

    Call ``step(loss)`` after ``optimizer.step()`` with this rank's training loss of that step;
    ``heldout_loss`` feeds scalars explored with ``signal="heldout"``. Resuming an exploring run
    needs :meth:`state_dict` / :meth:`load_state_dict` (``last_epoch`` restores the curve only).
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, last_epoch=-1, *, spread=0.1,
                 sync_every=1000, auto_lr=True, auto_lr_start=None, average=True, temperature=0.1,
                 meta_lr=0.5, momentum=0.9, lr_floor=None, perm_seed=1024, init_noise=0.0, init_seed=0,
                 params=None, hyperparams=(),
                 spread_before_auto_lr=True, schedule_after_start="controller", nonfinite="drop",
                 verify_permutations=True, process_group=None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        self.group = process_group
        self.rank, self.world_size = rank_and_world(process_group)
        self.curve = OneCycleCurve(len(optimizer.param_groups), max_lr, total_steps, epochs, steps_per_epoch,
                                   pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum,
                                   div_factor, final_div_factor, three_phase)
        self.total_steps = self.curve.total_steps
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
            self.use_beta1 = "betas" in optimizer.defaults
        self.ensemble = EnsembleSchedule(self.world_size, self.curve, spread, sync_every, auto_lr, auto_lr_start,
                                         average, temperature, meta_lr, momentum, lr_floor, perm_seed,
                                         hyperparams, spread_before_auto_lr, schedule_after_start)
        self.nonfinite = nonfinite
        self.verify_permutations = verify_permutations
        self.params = list(params) if params is not None else [
            p for g in optimizer.param_groups for p in g["params"]]
        self.base_lrs = list(self.curve.initial_lr)
        rho = self.ensemble.multipliers()[self.rank]
        for g, group in enumerate(optimizer.param_groups):      # paper semantics: fan-out from step 0
            group["initial_lr"] = self.curve.initial_lr[g] * float(rho[g])
            group["max_lr"] = self.curve.max_lr[g] * float(rho[g])
            group["min_lr"] = self.curve.min_lr[g] * float(rho[g])
            if cycle_momentum:
                group["max_momentum"] = self.curve.max_momentum[g]
                group["base_momentum"] = self.curve.base_momentum[g]
        if last_epoch == -1:
            perturb_(self.params, init_noise, self.rank, init_seed)
        else:
            warm_noise([], init_noise, self.rank, init_seed)          # same argument checks
        self.ensemble.t = last_epoch + 1           # torch: last_epoch=k resumes at step k + 1
        self.last_epoch = self.ensemble.t
        self._reset_window()
        self.history = []            # one dict per controller sync (rank-identical)
        self._step_count = 1
        self._apply()

    # ------------------------------------------------------------------ helpers
    def _reset_window(self):
        self._loss_sum = None
        self._loss_count = 0
        self._heldout_sum = None
        self._heldout_count = 0

    @staticmethod
    def _accumulate(total, value):
        v = value.detach().to(torch.float64) if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
        return v if total is None else total + v

    def _apply(self):
        lrs = self.ensemble.lrs_for(self.rank)
        momenta = self.ensemble.momentum() if self.cycle_momentum else None
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(lrs[g])
            if momenta is not None:
                if self.use_beta1:
                    group["betas"] = (momenta[g], *group["betas"][1:])
                else:
                    group["momentum"] = momenta[g]
        self.ensemble.apply_hyperparams(self.rank)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self):
        """LR of every group for this rank at the current step."""
        return self.ensemble.lrs_for(self.rank)

    def _window_mean(self, total, count, device):
        if count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=device)
        return (total / count).to(device=device, dtype=torch.float64)

    def _finite_weight(self, window_loss) -> float:
        if self.nonfinite == "ignore":
            return 1.0
        loss_ok = self._loss_count == 0 or bool(torch.isfinite(window_loss).all())     # no loss given: params only
        finite = loss_ok and all(bool(torch.isfinite(p).all()) for p in self.params)
        if not finite and self.nonfinite == "raise":
            raise FloatingPointError(f"rank {self.rank}: non-finite parameters or loss at step {self.ensemble.t}")
        return 1.0 if finite else 0.0

    # ------------------------------------------------------------------ public
    def step(self, loss=None, heldout_loss=None, epoch=None):
        """Advance one step. ``loss``: this rank's training loss of the step just taken."""
        if epoch is not None:
            raise TypeError("HDETOneCycleLR.step takes the training loss, not an epoch")
        if loss is not None:
            self._loss_sum = self._accumulate(self._loss_sum, loss)
            self._loss_count += 1
        if heldout_loss is not None:
            self._heldout_sum = self._accumulate(self._heldout_sum, heldout_loss)
            self._heldout_count += 1
        ens = self.ensemble
        lrs_used = ens.lrs() if (ens.t + 1) % ens.sync_every == 0 else None     # only a sync reads them
        self._step_count += 1
        if ens.advance():
            self._sync(lrs_used)
        self.last_epoch = ens.t
        self._apply()

    def _sync(self, lrs_used):
        ens = self.ensemble
        device = collective_device(self.group, self.params[0].device if self.params else None)
        window = self._window_mean(self._loss_sum, self._loss_count, device)
        if ens.controller_active() and self._loss_count == 0:
            raise ValueError("auto-LR needs this rank's training loss: call scheduler.step(loss)")
        if ens.average and self.world_size > 1:
            average_parameters(self.params, self.group, weight=self._finite_weight(window))
        if ens.controller_active():
            losses = all_gather_rows(window, self.group, device)
            heldout = None
            if self._heldout_count:
                heldout = all_gather_rows(self._window_mean(self._heldout_sum, self._heldout_count, device),
                                          self.group, device)
            # Every rank computes the update from the same gathered numbers; lrs_used is
            # rank-independent bookkeeping, so it needs no gather.
            info = ens.controller_sync(lrs_used, losses, heldout)
            if self.verify_permutations:
                check_same_on_all_ranks(ens.all_perms(), f"HDET permutations at step {ens.t}", self.group, device)
            self.history.append({"step": ens.t, "losses": losses.tolist(), **{k: v.tolist() for k, v in info.items()}})
        self._reset_window()

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (save it per rank, alongside that rank's model)."""
        return {"ensemble": self.ensemble.state_dict(), "last_epoch": self.last_epoch, "_step_count": self._step_count,
                "loss_sum": self._loss_sum, "loss_count": self._loss_count, "heldout_sum": self._heldout_sum,
                "heldout_count": self._heldout_count, "history": list(self.history), "rank": self.rank,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks, this job has {self.world_size}")
        self.ensemble.load_state_dict(state["ensemble"])
        self.last_epoch = state["last_epoch"]
        self._step_count = state["_step_count"]
        self._loss_sum, self._loss_count = state["loss_sum"], state["loss_count"]
        self._heldout_sum, self._heldout_count = state["heldout_sum"], state["heldout_count"]
        self.history = list(state["history"])
        self._apply()
