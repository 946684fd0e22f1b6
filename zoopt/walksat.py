"""Plain stochastic local search for MAX-SAT: WalkSAT (SKC variant) and probSAT.

A reference baseline, written for clarity: the setup (true-literal counts,
the variable -> clause occurrence lists, the unsatisfied set) is vectorized
in torch, the flips themselves run one at a time in Python.

Each flip picks a uniformly random unsatisfied clause and computes the
*break* weight of its variables (satisfied clauses whose only true literal is
that variable). WalkSAT-SKC (Selman, Kautz & Cohen 1994) flips a zero-break
variable if there is one, else with probability ``noise`` a random variable of
the clause, else one of minimal break. probSAT (Balint & Schöning 2012, poly
variant) flips variable ``u`` with probability proportional to
``(eps + break_u) ** -cb``. Weighted and partial instances use weighted
breaks (hard clauses weigh ``top``). The best assignment seen is kept by
undoing the flips made after it.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from zoopt.problems.maxsat import MaxSATInstance

METHODS = ("walksat", "probsat")


@dataclass
class SLSResult:
    assign: torch.Tensor
    cost: float
    report: dict
    flips: int
    seconds: float
    history: list = field(default_factory=list)

    @property
    def satisfied_fraction(self) -> float:
        return self.report["satisfied_fraction"]


class LocalSearch:
    """WalkSAT / probSAT on a :class:`MaxSATInstance` (``method`` in ``METHODS``)."""

    def __init__(self, instance: MaxSATInstance, method: str = "walksat", seed: int = 0, noise: float = 0.567,
                 cb: float = 2.06, eps: float = 0.9, init: Optional[torch.Tensor] = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not 0 <= noise <= 1:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.instance, self.method = instance, method
        self.noise, self.cb, self.eps = float(noise), float(cb), float(eps)
        self.rng = random.Random(seed)
        n, m = instance.n_vars, instance.n_clauses
        if init is None:
            g = torch.Generator().manual_seed(seed)
            assign = torch.rand(n, generator=g) < 0.5
        else:
            assign = instance.check_assignment(init).clone()
        counts = instance.true_counts(assign).to(torch.int32)
        w = instance.cost_weights()
        self.weights = None if w is None else w.tolist()
        # occurrence lists by (variable, polarity): entries of var u with positive literal, then negative
        key = instance.lit_var.to(torch.int64) * 2 + instance.lit_neg.to(torch.int64)
        order = torch.argsort(key, stable=True)
        ptr = torch.zeros(2 * n + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(key, minlength=2 * n), 0, out=ptr[1:])
        self.occ_clause = instance.clause_of_lit[order].tolist()
        self.occ_ptr = ptr.tolist()
        self.lit_var = instance.lit_var.tolist()
        self.clause_ptr = instance.clause_ptr.tolist()
        self.assign = assign.tolist()
        self.numtrue = counts.tolist()
        unsat = (counts == 0).nonzero().squeeze(1).tolist()
        self.unsat = unsat
        self.unsat_pos = [-1] * m
        for i, c in enumerate(unsat):
            self.unsat_pos[c] = i
        self.cost = float(len(unsat)) if w is None else float(w[counts == 0].sum())
        self.best_cost = self.cost
        self.trail: list = []      # flips since the best assignment
        self.flips = 0

    def _true_occ(self, u: int):
        """Clauses in which variable u's literal is currently true."""
        base = 2 * u + (0 if self.assign[u] else 1)
        return self.occ_clause[self.occ_ptr[base]:self.occ_ptr[base + 1]]

    def _false_occ(self, u: int):
        base = 2 * u + (1 if self.assign[u] else 0)
        return self.occ_clause[self.occ_ptr[base]:self.occ_ptr[base + 1]]

    def break_of(self, u: int) -> float:
        nt, w = self.numtrue, self.weights
        if w is None:
            return sum(1 for c in self._true_occ(u) if nt[c] == 1)
        return sum(w[c] for c in self._true_occ(u) if nt[c] == 1)

    def flip(self, u: int) -> None:
        """Flip variable ``u``, updating counts, the unsatisfied set, the cost and the best-so-far trail."""
        self._flip(u)
        self.flips += 1
        if self.cost < self.best_cost:
            self.best_cost = self.cost
            self.trail.clear()
        else:
            self.trail.append(u)

    def _flip(self, u: int) -> None:
        nt, w, unsat, pos = self.numtrue, self.weights, self.unsat, self.unsat_pos
        delta = 0.0
        for c in self._true_occ(u):          # these literals become false
            nt[c] -= 1
            if nt[c] == 0:
                pos[c] = len(unsat)
                unsat.append(c)
                delta += 1.0 if w is None else w[c]
        for c in self._false_occ(u):         # these become true
            if nt[c] == 0:
                i, last = pos[c], unsat[-1]
                unsat[i] = last
                pos[last] = i
                unsat.pop()
                pos[c] = -1
                delta -= 1.0 if w is None else w[c]
            nt[c] += 1
        self.assign[u] = not self.assign[u]
        self.cost += delta

    def _pick(self, clause: int) -> int:
        vs = self.lit_var[self.clause_ptr[clause]:self.clause_ptr[clause + 1]]
        breaks = [self.break_of(u) for u in vs]
        if self.method == "walksat":
            best = min(breaks)
            if best == 0:
                return vs[breaks.index(0)]
            if self.rng.random() < self.noise:
                return vs[self.rng.randrange(len(vs))]
            ties = [u for u, b in zip(vs, breaks, strict=True) if b == best]
            return ties[self.rng.randrange(len(ties))]
        probs = [(self.eps + b) ** -self.cb for b in breaks]
        r = self.rng.random() * sum(probs)
        for u, p in zip(vs, probs, strict=True):
            r -= p
            if r <= 0:
                return u
        return vs[-1]

    def run(self, max_flips: Optional[int] = None, seconds: Optional[float] = None,
            log_every: int = 0) -> SLSResult:
        """Flip until ``max_flips`` flips, ``seconds`` of wall time or no unsatisfied clause is left."""
        if max_flips is None and seconds is None:
            raise ValueError("give max_flips or seconds")
        t0 = time.perf_counter()
        history = []
        limit = math.inf if max_flips is None else int(max_flips)
        while self.unsat and self.flips < limit:
            c = self.unsat[self.rng.randrange(len(self.unsat))]
            if self.clause_ptr[c + 1] == self.clause_ptr[c]:
                break  # only empty clauses left unsatisfied: nothing to flip
            self.flip(self._pick(c))
            if self.flips % 1000 == 0:
                if log_every and self.flips % log_every == 0:
                    history.append({"flips": self.flips, "best": self.best_cost,
                                    "seconds": time.perf_counter() - t0})
                if seconds is not None and time.perf_counter() - t0 >= seconds:
                    break
        trail, self.trail = self.trail, []
        for u in reversed(trail):          # back to the best assignment
            self._flip(u)
        assign = torch.tensor(self.assign, dtype=torch.bool)
        report = self.instance.evaluate(assign)
        return SLSResult(assign=assign, cost=report["cost"], report=report, flips=self.flips,
                         seconds=time.perf_counter() - t0, history=history)


def local_search(instance: MaxSATInstance, method: str = "walksat", seed: int = 0, max_flips: Optional[int] = None,
                 seconds: Optional[float] = None, **options) -> SLSResult:
    """Convenience: ``LocalSearch(instance, method, seed, **options).run(max_flips, seconds)``."""
    return LocalSearch(instance, method=method, seed=seed, **options).run(max_flips=max_flips, seconds=seconds)


__all__ = ["LocalSearch", "SLSResult", "local_search", "METHODS"]
