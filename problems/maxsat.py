"""MAX-SAT instances: random k-SAT, DIMACS CNF / WCNF input and output, vectorized evaluation.

Storage (all torch, integers in int32 where they index literals):

* clauses are flat: literal ``i`` belongs to clause ``c`` for
  ``clause_ptr[c] <= i < clause_ptr[c+1]``; ``lit_var`` holds 0-based variable
  ids (int32), ``lit_neg`` whether the literal is negated (bool);
* ``weights`` (float64, ``None`` = every clause weighs 1) and ``hard`` (bool,
  ``None`` = no hard clauses). The *cost* of an assignment is the weight of the
  unsatisfied soft clauses plus ``top = soft weight + 1`` per violated hard
  clause, so any assignment that satisfies every hard clause beats any that does not.

An assignment is a bool tensor ``[n_vars]`` (True = the variable is true).

Delta evaluation: a candidate that changes a few variables changes only the
clauses that contain them. :class:`VarClauseIndex` is the CSR
variable -> clause index; ``candidate_costs`` gathers each candidate's clauses
through it and re-evaluates just those with the candidate's values. The
PolyStep step (:class:`BlockDelta`) needs all ``P x V`` candidates at once,
each rewriting one block of consecutive variables (the 2-coordinate
particles): from the current true-literal count of every clause, one pass
over the literals gives each variable's flip score (clauses it would break
minus clauses it would make, weighted), a candidate's change is the sum of
the scores of the variables it flips, and the rare clauses with two literals
in one block are re-evaluated exactly. The full objective is computed once
per step; everything is int32/int16/bool apart from the float64 weights.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from zoopt.problems.base import Problem
from zoopt.spec import member_index

DEFAULT_RATIO = 4.27  # clauses per variable of the random 3-SAT instances (the satisfiability threshold)
MAX_VARS = 2 ** 31 - 1       # variable ids are int32
MAX_WEIGHT = 2 ** 63 - 1     # the MaxSAT Evaluation's limit on weights, top and the total soft weight


# -- the instance -----------------------------------------------------------------------------

@dataclass
class MaxSATInstance:
    """A (weighted, partial) MAX-SAT formula in flat CSR-by-clause form."""

    n_vars: int
    clause_ptr: torch.Tensor            # int64 [m + 1]
    lit_var: torch.Tensor               # int32 [E], 0-based variable of each literal
    lit_neg: torch.Tensor               # bool  [E], literal is negated
    weights: Optional[torch.Tensor] = None   # float64 [m] or None (all 1)
    hard: Optional[torch.Tensor] = None      # bool [m] or None (no hard clauses)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not 0 <= self.n_vars <= MAX_VARS:
            raise ValueError(f"n_vars must be in [0, 2**31 - 1] (int32 variable ids), got {self.n_vars}")
        self.clause_ptr = torch.as_tensor(self.clause_ptr, dtype=torch.int64)
        self.lit_var = torch.as_tensor(self.lit_var, dtype=torch.int32)
        self.lit_neg = torch.as_tensor(self.lit_neg, dtype=torch.bool)
        if self.weights is not None:
            self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
            if self.weights.shape != (self.n_clauses,):
                raise ValueError(f"weights must have shape ({self.n_clauses},), got {tuple(self.weights.shape)}")
            if not bool(torch.isfinite(self.weights).all()) or bool((self.weights <= 0).any()):
                raise ValueError("weights must be finite and > 0")
            if not math.isfinite(float(self.weights.sum())):   # top and every cost would be inf / nan
                raise ValueError("weights must have a finite sum")
        if self.hard is not None:
            self.hard = torch.as_tensor(self.hard, dtype=torch.bool)
            if self.hard.shape != (self.n_clauses,):
                raise ValueError(f"hard must have shape ({self.n_clauses},), got {tuple(self.hard.shape)}")
            if not bool(self.hard.any()):
                self.hard = None
        if self.lit_var.numel() and (int(self.lit_var.min()) < 0 or int(self.lit_var.max()) >= self.n_vars):
            raise ValueError(f"literal variables must lie in [0, {self.n_vars})")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_clauses(cls, clauses: Sequence[Sequence[int]], n_vars: Optional[int] = None,
                     weights: Optional[Sequence[float]] = None, hard: Optional[Sequence[bool]] = None):
        """From DIMACS-style clauses (lists of nonzero ints, ``-v`` = not v, 1-based)."""
        lens = np.fromiter((len(c) for c in clauses), dtype=np.int64, count=len(clauses))
        flat = np.fromiter((lit for c in clauses for lit in c), dtype=np.int64, count=int(lens.sum()))
        if np.any(flat == 0):
            raise ValueError("clauses must not contain 0 (it only terminates clauses in DIMACS files)")
        top = int(np.abs(flat).max()) if flat.size else 0
        if n_vars is None:
            n_vars = top
        elif top > n_vars:
            raise ValueError(f"a clause uses variable {top} but n_vars is {n_vars}")
        ptr = np.zeros(len(clauses) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        return cls(int(n_vars), torch.from_numpy(ptr), torch.from_numpy((np.abs(flat) - 1).astype(np.int32)),
                   torch.from_numpy(flat < 0),
                   None if weights is None else torch.tensor(np.asarray(weights, dtype=np.float64)),
                   None if hard is None else torch.tensor(np.asarray(hard, dtype=bool)))

    # -- sizes and weights -----------------------------------------------------------------------
    @property
    def n_clauses(self) -> int:
        return int(self.clause_ptr.numel()) - 1

    @property
    def n_lits(self) -> int:
        return int(self.lit_var.numel())

    @property
    def clause_len(self) -> torch.Tensor:
        return self.clause_ptr[1:] - self.clause_ptr[:-1]

    @property
    def uniform_k(self) -> Optional[int]:
        """The common clause length when every clause has the same (positive) length, else None."""
        if "k" not in self._cache:
            lens = self.clause_len
            k = int(lens[0]) if lens.numel() else 0
            self._cache["k"] = k if k > 0 and bool((lens == k).all()) else None
        return self._cache["k"]

    @property
    def clause_of_lit(self) -> torch.Tensor:
        """int32 ``[E]``: the clause each literal belongs to."""
        if "clause_of_lit" not in self._cache:
            self._cache["clause_of_lit"] = torch.repeat_interleave(
                torch.arange(self.n_clauses, dtype=torch.int32), self.clause_len)
        return self._cache["clause_of_lit"]

    @property
    def is_weighted(self) -> bool:
        return self.weights is not None

    @property
    def is_partial(self) -> bool:
        return self.hard is not None

    @property
    def soft_weight(self) -> float:
        """Total weight of the soft clauses."""
        if self.weights is None:
            return float(self.n_clauses - (0 if self.hard is None else int(self.hard.sum())))
        w = self.weights if self.hard is None else self.weights[~self.hard]
        return float(w.sum())

    @property
    def top(self) -> float:
        """Cost of one violated hard clause: soft weight + 1."""
        return self.soft_weight + 1.0

    def cost_weights(self) -> Optional[torch.Tensor]:
        """float64 ``[m]`` cost of leaving each clause unsatisfied (hard clauses cost ``top``); None = all 1."""
        if self.weights is None and self.hard is None:
            return None
        if "cost_weights" not in self._cache:
            w = torch.ones(self.n_clauses, dtype=torch.float64) if self.weights is None else self.weights.clone()
            if self.hard is not None:
                w[self.hard] = self.top
            self._cache["cost_weights"] = w
        return self._cache["cost_weights"]

    def clauses(self) -> list:
        """DIMACS-style clause lists (1-based, negative = negated)."""
        lits = (self.lit_var.to(torch.int64) + 1) * (1 - 2 * self.lit_neg.to(torch.int64))
        ptr = self.clause_ptr.tolist()
        flat = lits.tolist()
        return [flat[ptr[c]:ptr[c + 1]] for c in range(self.n_clauses)]

    # -- evaluation ----------------------------------------------------------------------------
    def check_assignment(self, assign: torch.Tensor) -> torch.Tensor:
        assign = torch.as_tensor(assign)
        if assign.shape[-1:] != (self.n_vars,):
            raise ValueError(f"assignment must have last dimension {self.n_vars}, got {tuple(assign.shape)}")
        return assign.to(torch.bool)

    def literal_true(self, assign: torch.Tensor) -> torch.Tensor:
        """bool ``[E]``: which literals are true under ``assign``."""
        return self.check_assignment(assign)[self.lit_var] ^ self.lit_neg

    def true_counts(self, assign: torch.Tensor) -> torch.Tensor:
        """``[m]`` number of true literals per clause (int16; int32 for clauses longer than 32767)."""
        lt = self.literal_true(assign)
        k = self.uniform_k
        if k is not None:
            return lt.view(self.n_clauses, k).sum(1, dtype=torch.int16)
        dtype = torch.int16 if self.n_clauses == 0 or int(self.clause_len.max()) < 32767 else torch.int32
        counts = torch.zeros(self.n_clauses, dtype=torch.int32)
        counts.index_add_(0, self.clause_of_lit, lt.to(torch.int32))
        return counts.to(dtype)

    def cost_from_counts(self, counts: torch.Tensor) -> float:
        """Cost (unsatisfied weight, hard clauses at ``top``) from true-literal counts."""
        unsat = counts == 0
        w = self.cost_weights()
        return float(unsat.sum()) if w is None else float(w[unsat].sum())

    def cost(self, assign: torch.Tensor) -> float:
        """Unsatisfied soft weight + ``top`` per violated hard clause."""
        return self.cost_from_counts(self.true_counts(assign))

    def evaluate(self, assign: torch.Tensor) -> dict:
        """Everything a report needs about one assignment."""
        unsat = self.true_counts(assign) == 0
        hard_bad = 0 if self.hard is None else int((unsat & self.hard).sum())
        soft_unsat = unsat if self.hard is None else unsat & ~self.hard
        w = self.weights
        unsat_w = float(soft_unsat.sum()) if w is None else float(w[soft_unsat].sum())
        n_unsat = int(unsat.sum())
        return {"cost": unsat_w + hard_bad * self.top, "unsat_clauses": n_unsat,
                "satisfied_fraction": 1.0 - n_unsat / max(1, self.n_clauses),
                "unsat_soft_weight": unsat_w,
                "satisfied_soft_weight_fraction": 1.0 - unsat_w / self.soft_weight if self.soft_weight else 1.0,
                "hard_violated": hard_bad}

    def cost_batch(self, assign: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """float64 ``[N]`` costs of a batch of assignments ``[N, n_vars]``, ``chunk`` rows at a time."""
        assign = self.check_assignment(assign)
        if assign.dim() != 2:
            raise ValueError(f"assign must be [N, n_vars], got {tuple(assign.shape)}")
        w = self.cost_weights()
        out = torch.empty(assign.shape[0], dtype=torch.float64)
        k = self.uniform_k
        for s in range(0, assign.shape[0], chunk):
            lt = assign[s:s + chunk][:, self.lit_var] ^ self.lit_neg
            if k is not None:
                unsat = ~lt.view(lt.shape[0], self.n_clauses, k).any(2)
            else:
                counts = torch.zeros(lt.shape[0], self.n_clauses, dtype=torch.int32)
                counts.index_add_(1, self.clause_of_lit, lt.to(torch.int32))
                unsat = counts == 0
            out[s:s + chunk] = unsat.sum(1).double() if w is None else unsat.double() @ w
        return out


# -- random k-SAT -----------------------------------------------------------------------------

def random_ksat(n_vars: int, ratio: float = DEFAULT_RATIO, k: int = 3, seed: int = 0,
                n_clauses: Optional[int] = None) -> MaxSATInstance:
    """Uniform random k-SAT: ``m = int(ratio * n_vars)`` clauses (or ``n_clauses``), each over
    ``k`` distinct variables drawn uniformly, each literal negated with probability 1/2.

    A pure function of its arguments (numpy PCG64 seeded with ``seed``).
    """
    if isinstance(n_vars, bool) or not isinstance(n_vars, (int, np.integer)) or n_vars < 1:
        raise ValueError(f"n_vars must be an int >= 1, got {n_vars!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_vars:
        raise ValueError(f"k must be an int in [1, n_vars={n_vars}], got {k!r}")
    if n_clauses is None:
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"ratio must be a finite number > 0, got {ratio!r}")
        n_clauses = int(ratio * n_vars)
    if isinstance(n_clauses, bool) or not isinstance(n_clauses, (int, np.integer)) or n_clauses < 0:
        raise ValueError(f"n_clauses must be an int >= 0, got {n_clauses!r}")
    if n_vars >= 2 ** 31:
        raise ValueError(f"n_vars must be < 2**31 (int32 variable ids), got {n_vars}")
    rng = np.random.Generator(np.random.PCG64(seed))
    m, k = int(n_clauses), int(k)
    var = rng.integers(0, n_vars, size=(m, k), dtype=np.int64)
    while True:  # redraw the rows that repeat a variable until all are distinct
        s = np.sort(var, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if k > 1 else np.empty(0, np.int64)
        if bad.size == 0:
            break
        var[bad] = rng.integers(0, n_vars, size=(bad.size, k), dtype=np.int64)
    neg = rng.integers(0, 2, size=(m, k), dtype=np.int8).astype(bool)
    ptr = torch.arange(0, m * k + 1, k, dtype=torch.int64)
    return MaxSATInstance(int(n_vars), ptr, torch.from_numpy(var.reshape(-1).astype(np.int32)),
                          torch.from_numpy(neg.reshape(-1)))


# -- DIMACS CNF / WCNF reading ------------------------------------------------------------------

class _Fallback(Exception):
    """The fast parser saw something unusual; the line-by-line parser decides (and names the line)."""


def read_dimacs(source) -> MaxSATInstance:
    """Read DIMACS CNF (``p cnf n m``), WCNF (``p wcnf n m [top]``, weight ``>= top`` = hard) or the
    header-less 2022 WCNF format (``h`` lines hard, ``w lits 0`` soft).

    ``source`` is a path (``.gz``, ``.xz`` and ``.bz2`` are decompressed by
    extension) or a text file object. Comments (``c ...``) and a SATLIB ``%``
    end marker are allowed. Anything malformed raises a one-line
    ``ValueError`` naming the file and, where there is one, the line: bytes
    that are not text, numbers beyond the format's limits (variables below
    2**31, weights, ``top`` and the total soft weight at most 2**63 - 1), an
    empty file.
    """
    if hasattr(source, "read"):
        text = source.read()
        name = getattr(source, "name", "<stream>")
        if isinstance(text, bytes):
            text = _decode(text, name)
    else:
        name = os.fspath(source)
        text = _decode(_read_bytes(name), name)
    if "\x00" in text:
        raise ValueError(f"{name}: line {text.count(chr(10), 0, text.index(chr(0))) + 1}: "
                         f"NUL byte: not a text DIMACS file")
    try:
        inst = _parse_fast(text)
    except _Fallback:
        inst = _parse_slow(text, name)
    if inst.soft_weight > MAX_WEIGHT:
        raise ValueError(f"{name}: the soft clauses weigh {inst.soft_weight:.6g} in total, above 2**63 - 1 "
                         f"(the MaxSAT format's limit)")
    return inst


_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def _read_bytes(name: str) -> bytes:
    """The file's bytes, decompressed when its extension is ``.gz``, ``.xz`` or ``.bz2``."""
    opener = _OPENERS.get(os.path.splitext(name)[1].lower(), open)
    try:
        with opener(name, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, not a file") from None
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        if opener is open:
            raise ValueError(f"{name}: cannot read: {exc}") from None
        raise ValueError(f"{name}: cannot decompress: {exc}") from None


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{name}: line {line}: byte 0x{data[exc.start]:02x} is not text "
                         f"(a binary or compressed file without its .gz/.xz/.bz2 extension?)") from None


_COMMENT = re.compile(r"^[ \t]*c.*$", re.M)
_HEADER = re.compile(r"^[ \t]*p[ \t].*$", re.M)
_HARD_SENTINEL = -(2 ** 62)


def _parse_fast(text: str) -> MaxSATInstance:
    if "%" in text:
        raise _Fallback
    body = _COMMENT.sub("", text)
    headers = _HEADER.findall(body)
    if len(headers) > 1:
        raise _Fallback
    kind, n_vars, n_decl, top = "new", None, None, None
    if headers:
        f = headers[0].split()
        if len(f) < 4 or f[1] not in ("cnf", "wcnf"):
            raise _Fallback
        try:
            n_vars, n_decl = int(f[2]), int(f[3])
            top = int(f[4]) if f[1] == "wcnf" and len(f) == 5 else None
        except ValueError:
            raise _Fallback from None
        if len(f) > (5 if f[1] == "wcnf" else 4) or not 0 <= n_vars <= MAX_VARS or n_decl < 0 \
                or (top is not None and not 0 < top <= MAX_WEIGHT):
            raise _Fallback
        kind = f[1]
        head_at = body.index(headers[0])
        if body[:head_at].split():
            raise _Fallback  # clauses before the header
        body = body[head_at + len(headers[0]):]
    if kind == "new":
        body = re.sub(r"(?m)^[ \t]*h(?=[ \t])", str(_HARD_SENTINEL), body)
    tokens = body.split()
    try:
        t = np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    except (ValueError, OverflowError):   # not an integer, or beyond 64 bits
        raise _Fallback from None
    if t.size == 0 or t[-1] != 0:         # empty: the slow parser says whether that is an error
        raise _Fallback
    zeros = np.flatnonzero(t == 0)
    if kind == "cnf":
        weights = None
        lit_mask = t != 0
        ends = zeros
        starts = np.concatenate([[0], zeros[:-1] + 1])
        lens = ends - starts
    else:
        starts = np.concatenate([[0], zeros[:-1] + 1]).astype(np.int64)
        if np.any(starts >= zeros):
            raise _Fallback  # a clause with no weight
        weights = t[starts]
        if np.any((weights <= 0) & (weights != _HARD_SENTINEL)) or (kind == "wcnf" and np.any(weights == _HARD_SENTINEL)):
            raise _Fallback
        lit_mask = t != 0
        lit_mask[starts] = False
        lens = zeros - starts - 1
    lits = t[lit_mask]
    if lits.size and (n_vars is not None and np.abs(lits).max() > n_vars):
        raise _Fallback
    if np.any(np.abs(lits) >= 2 ** 31):
        raise _Fallback
    if n_decl is not None and n_decl != zeros.size:
        raise _Fallback
    if n_vars is None:
        n_vars = int(np.abs(lits).max()) if lits.size else 0
    ptr = np.zeros(zeros.size + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    hard = None
    wts = None
    if kind == "wcnf":
        hard = weights >= top if top is not None else None
        wts = weights.astype(np.float64)
        if hard is not None:
            wts[hard] = 1.0
    elif kind == "new":
        hard = weights == _HARD_SENTINEL
        wts = np.where(hard, 1.0, weights.astype(np.float64))
    return MaxSATInstance(n_vars, torch.from_numpy(ptr), torch.from_numpy((np.abs(lits) - 1).astype(np.int32)),
                          torch.from_numpy(lits < 0),
                          None if wts is None or np.all(wts == 1.0) else torch.from_numpy(wts),
                          None if hard is None else torch.from_numpy(np.ascontiguousarray(hard)))


def _parse_weight(tok: str, where: str) -> float:
    try:
        w = int(tok)
    except ValueError:
        try:
            w = float(tok)
        except ValueError:
            raise ValueError(f"{where}: clause weight {tok!r} is not a number") from None
    if not w > 0:
        raise ValueError(f"{where}: clause weight must be > 0, got {tok}")
    if not w <= MAX_WEIGHT:   # inf too
        raise ValueError(f"{where}: clause weight {tok} is above 2**63 - 1 (the MaxSAT format's limit)")
    return w


def _parse_slow(text: str, name: str = "<string>") -> MaxSATInstance:
    """Line-by-line reference parser; every error names its line."""
    kind, n_vars, n_decl, top, header_line = "new", None, None, None, None
    clauses, weights, hard = [], [], []
    cur: Optional[list] = None         # literals of the clause being read
    cur_w, cur_hard, cur_line = None, False, 0
    lineno = 0
    for lineno, raw in enumerate(io.StringIO(text), start=1):
        line = raw.strip()
        where = f"{name}: line {lineno}"
        if not line or line[0] == "c":
            continue
        if line[0] == "%":
            break
        if line[0] == "p":
            f = line.split()
            if header_line is not None:
                raise ValueError(f"{where}: second header line (first on line {header_line})")
            if clauses or cur is not None:
                raise ValueError(f"{where}: header after clauses")
            if len(f) < 4 or f[1] not in ("cnf", "wcnf") or len(f) > (5 if f[1] == "wcnf" else 4):
                raise ValueError(f"{where}: malformed header {line!r}; expected 'p cnf VARS CLAUSES' "
                                 f"or 'p wcnf VARS CLAUSES [TOP]'")
            try:
                n_vars, n_decl = int(f[2]), int(f[3])
                top = int(f[4]) if len(f) == 5 else None
            except ValueError:
                raise ValueError(f"{where}: header numbers must be integers, got {line!r}") from None
            if n_vars < 0 or n_decl < 0 or (top is not None and top <= 0):
                raise ValueError(f"{where}: header numbers must be >= 0 (top > 0), got {line!r}")
            if n_vars > MAX_VARS:
                raise ValueError(f"{where}: header declares {n_vars} variables; at most 2**31 - 1 are supported")
            if top is not None and top > MAX_WEIGHT:
                raise ValueError(f"{where}: top {top} is above 2**63 - 1 (the MaxSAT format's limit)")
            kind, header_line = f[1], lineno
            continue
        for tok in line.split():
            if cur is None:  # a clause starts here
                cur, cur_line, cur_hard, cur_w = [], lineno, False, 1
                if kind == "new":
                    if tok == "h":
                        cur_hard = True
                        continue
                    cur_w = _parse_weight(tok, where)
                    continue
                if kind == "wcnf":
                    cur_w = _parse_weight(tok, where)
                    cur_hard = top is not None and cur_w >= top
                    continue
            try:
                lit = int(tok)
            except ValueError:
                raise ValueError(f"{where}: literal {tok!r} is not an integer") from None
            if lit == 0:
                clauses.append(cur)
                weights.append(1 if cur_hard else cur_w)
                hard.append(cur_hard)
                cur = None
                continue
            if n_vars is not None and abs(lit) > n_vars:
                raise ValueError(f"{where}: literal {lit} uses a variable above the header's {n_vars}")
            if abs(lit) >= 2 ** 31:
                raise ValueError(f"{where}: literal {lit} is out of range")
            cur.append(lit)
    if cur is not None:
        raise ValueError(f"{name}: line {cur_line}: clause not terminated by 0 before the end of the file")
    if header_line is None and not clauses:
        raise ValueError(f"{name}: no header and no clauses in its {lineno} lines (an empty or comments-only file)")
    if n_decl is not None and n_decl != len(clauses):
        raise ValueError(f"{name}: line {header_line}: header declares {n_decl} clauses but the file has "
                         f"{len(clauses)}")
    wts = np.asarray(weights, dtype=np.float64)
    hard_arr = np.asarray(hard, dtype=bool)
    return MaxSATInstance.from_clauses(clauses, n_vars=n_vars if n_vars is not None else None,
                                       weights=None if kind == "cnf" or np.all(wts == 1.0) else wts,
                                       hard=hard_arr if kind != "cnf" and hard_arr.any() else None)


# -- writing --------------------------------------------------------------------------------

def _fmt_weight(w: float) -> str:
    return str(int(w)) if float(w).is_integer() else repr(float(w))


def write_dimacs(instance: MaxSATInstance, target, fmt: Optional[str] = None) -> None:
    """Write ``instance`` as DIMACS: ``fmt='cnf'`` (unweighted, no hard clauses; the default
    for such instances) or ``'wcnf'`` (``p wcnf n m top``; hard clauses carry weight ``top``)."""
    if fmt is None:
        fmt = "cnf" if not instance.is_weighted and not instance.is_partial else "wcnf"
    if fmt not in ("cnf", "wcnf"):
        raise ValueError(f"fmt must be 'cnf' or 'wcnf', got {fmt!r}")
    if fmt == "cnf" and (instance.is_weighted or instance.is_partial):
        raise ValueError("fmt='cnf' cannot hold weights or hard clauses; use fmt='wcnf'")
    lits = ((instance.lit_var.to(torch.int64) + 1) * (1 - 2 * instance.lit_neg.to(torch.int64))).numpy()
    ptr = instance.clause_ptr.numpy()
    m = instance.n_clauses
    out = []
    if fmt == "cnf":
        out.append(f"p cnf {instance.n_vars} {m}\n")
        prefixes = [""] * m
    else:
        top = instance.top
        w = np.ones(m) if instance.weights is None else instance.weights.numpy()
        hard = np.zeros(m, bool) if instance.hard is None else instance.hard.numpy()
        out.append(f"p wcnf {instance.n_vars} {m} {_fmt_weight(top)}\n")
        top_s = _fmt_weight(top) + " "
        prefixes = [top_s if hard[c] else _fmt_weight(w[c]) + " " for c in range(m)]
    k = instance.uniform_k
    if k is not None and fmt == "cnf":   # one join over all tokens; "0" only ever ends a clause
        tokens = np.concatenate([lits.reshape(m, k), np.zeros((m, 1), np.int64)], axis=1).ravel()
        out.append((" ".join(map(str, tokens.tolist())) + " ").replace(" 0 ", " 0\n") if m else "")
    elif k is not None:
        rows = lits.reshape(m, k).tolist()
        out.extend(p + " ".join(map(str, r)) + " 0\n" for p, r in zip(prefixes, rows, strict=True))
    else:
        flat = lits.tolist()
        for c in range(m):
            body = " ".join(map(str, flat[ptr[c]:ptr[c + 1]]))
            out.append(f"{prefixes[c]}{body} 0\n" if body else f"{prefixes[c]}0\n")
    text = "".join(out)
    if hasattr(target, "write"):
        target.write(text)
    else:
        from zoopt.atomic import write_text

        write_text(os.fspath(target), text)


# -- solutions in the MaxSAT-evaluation output format --------------------------------------------

def format_solution(assign: torch.Tensor, cost: Optional[float] = None, status: str = "UNKNOWN",
                    per_line: int = 20) -> str:
    """``o COST`` / ``s STATUS`` / ``v`` lines (``v 1 -2 3 ... 0``, 1-based, negative = false)."""
    a = torch.as_tensor(assign).to(torch.bool).reshape(-1)
    lits = (torch.arange(1, a.numel() + 1) * (2 * a.to(torch.int64) - 1)).tolist()
    lines = []
    if cost is not None:
        lines.append(f"o {_fmt_weight(cost)}")
    lines.append(f"s {status}")
    for s in range(0, len(lits), per_line):
        lines.append("v " + " ".join(map(str, lits[s:s + per_line])))
    lines.append("v 0")
    return "\n".join(lines) + "\n"


def write_solution(path, assign: torch.Tensor, cost: Optional[float] = None, status: str = "UNKNOWN") -> None:
    """Write the ``o``/``s``/``v`` lines atomically (a crash leaves the old file or the new one)."""
    from zoopt.atomic import write_text

    write_text(os.fspath(path), format_solution(assign, cost, status))


def parse_solution(text: str, n_vars: int) -> torch.Tensor:
    """Assignment from ``v`` lines (variables not mentioned are false)."""
    assign = torch.zeros(n_vars, dtype=torch.bool)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("v"):
            continue
        for tok in line.split()[1:]:
            try:
                lit = int(tok)
            except ValueError:
                raise ValueError(f"line {lineno}: literal {tok!r} is not an integer") from None
            if lit == 0:
                continue
            if abs(lit) > n_vars:
                raise ValueError(f"line {lineno}: literal {lit} outside 1..{n_vars}")
            assign[abs(lit) - 1] = lit > 0
    return assign


# -- the engine's Problem view (for population strategies) -----------------------------------

ENCODINGS = ("sign", "sigmoid")
COST_SCALES = ("fraction", "count")


def hard_assignment(x: torch.Tensor, encoding: str = "sign") -> torch.Tensor:
    """bool assignment of the real values ``x``: ``x > 0`` (``"sign"``) or ``round(sigmoid(x)) == 1``."""
    if encoding == "sign":
        return x > 0
    if encoding == "sigmoid":
        return torch.round(torch.sigmoid(x)) > 0.5
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


@dataclass
class BlockCosts:
    """The scores of one block spec: ``costs [P, V, K]`` (float64, scaled) and the center's
    hard assignment with its unscaled ``cost``."""

    costs: torch.Tensor
    assign: torch.Tensor
    cost: float


class MaxSATProblem(Problem):
    """``Problem`` view of an instance: a candidate is one real value per variable, its hard
    assignment :func:`hard_assignment` (``encoding``), its fitness the cost divided by
    ``cost_scale`` (lower is better): ``"fraction"`` divides by the total cost weight (the
    unsatisfied fraction for plain instances), ``"count"`` keeps the unsatisfied weight, a
    number divides by it.

    Specs of kind ``"block"`` (PolyStep: each member moves one block of
    consecutive variables) are scored by delta evaluation
    (:meth:`block_costs`, :class:`BlockDelta`) without building any candidate
    point; other specs through their explicit points.
    """

    def __init__(self, instance: MaxSATInstance, encoding: str = "sign", chunk: int = 8,
                 cost_scale="fraction"):
        if not isinstance(instance, MaxSATInstance):
            raise TypeError(f"instance must be a MaxSATInstance, got {type(instance).__name__}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.instance, self.encoding, self.chunk = instance, encoding, int(chunk)
        self.dim = instance.n_vars
        if isinstance(cost_scale, str):
            if cost_scale not in COST_SCALES:
                raise ValueError(f"cost_scale must be one of {COST_SCALES} or a number > 0, got {cost_scale!r}")
            w = instance.cost_weights()
            total = float(instance.n_clauses if w is None else w.sum())
            self.divisor = max(total, 1.0) if cost_scale == "fraction" else 1.0
        elif isinstance(cost_scale, bool) or not isinstance(cost_scale, (int, float)) \
                or not math.isfinite(cost_scale) or cost_scale <= 0:
            raise ValueError(f"cost_scale must be one of {COST_SCALES} or a number > 0, got {cost_scale!r}")
        else:
            self.divisor = float(cost_scale)
        self.cost_scale = cost_scale
        self._deltas: dict = {}          # BlockDelta per block size

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        return hard_assignment(x, self.encoding)

    def block_delta(self, block: int) -> "BlockDelta":
        if block not in self._deltas:
            self._deltas[block] = BlockDelta(self.instance, block=block)
        return self._deltas[block]

    def block_costs(self, center: torch.Tensor, offsets: torch.Tensor) -> BlockCosts:
        """Scaled costs ``[P, V, K]`` of every candidate ``(i, v, k)`` that moves block ``i`` of
        ``center`` by ``offsets[i, v, k]`` (``[P, V, K, d]``), from one pass over the literals
        plus the clauses of each block (:class:`BlockDelta`)."""
        p, v, k, d = offsets.shape
        n = self.instance.n_vars
        if p != -(-n // d):
            raise ValueError(f"offsets must cover {-(-n // d)} blocks of {d} variables, got {p}")
        flat = torch.zeros(p * d, dtype=offsets.dtype)
        flat[:n] = torch.as_tensor(center).reshape(-1)[:n].to(offsets.dtype)
        values = self.hard(flat.view(p, 1, 1, d) + offsets)                       # [P, V, K, d]
        values = values.permute(0, 3, 1, 2).reshape(p * d, v * k)                  # one row per variable
        delta = self.block_delta(d)
        assign = self.hard(flat[:n])
        counts, cost, scores = delta.prepare(assign)
        costs = (delta.deltas(assign, counts, values, scores) + cost) / self.divisor
        return BlockCosts(costs.view(p, v, k), assign, cost)

    def evaluate(self, spec, members=None) -> torch.Tensor:
        if getattr(spec, "kind", None) == "block":
            costs = self.block_costs(spec.center, spec.offsets).costs.reshape(-1)
            return costs if members is None else costs[member_index(members, spec.popsize)]
        pts = spec.points(members)
        return (self.instance.cost_batch(self.hard(pts), chunk=self.chunk) / self.divisor).to(torch.float32)

    def initial_point(self) -> torch.Tensor:
        return torch.zeros(self.dim)


# -- delta evaluation ------------------------------------------------------------------------

class VarClauseIndex:
    """CSR inverted index: the literals of variable ``v`` are entries ``var_ptr[v] .. var_ptr[v+1]``,
    with their clause (int32), variable (int32) and sign, ordered by variable then clause."""

    def __init__(self, instance: MaxSATInstance):
        self.instance = instance
        order = torch.argsort(instance.lit_var, stable=True)
        self.lit_pos = order                                       # clause-order position of each entry
        self.clause = instance.clause_of_lit[order]                # int32 [E]
        self.var = instance.lit_var[order]                         # int32 [E]
        self.neg = instance.lit_neg[order]                         # bool  [E]
        counts = torch.bincount(instance.lit_var.to(torch.int64), minlength=instance.n_vars)
        self.var_ptr = torch.zeros(instance.n_vars + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=self.var_ptr[1:])

    def clauses_of(self, var: int) -> torch.Tensor:
        """int32 clause ids containing variable ``var`` (once per occurrence)."""
        return self.clause[self.var_ptr[var]:self.var_ptr[var + 1]]

    def candidate_costs(self, assign: torch.Tensor, counts: torch.Tensor, variables: torch.Tensor,
                        values: torch.Tensor) -> torch.Tensor:
        """Cost change of each candidate ``j`` that sets ``variables[j]`` (``[N, s]``) to
        ``values[j]`` (bool ``[N, s]``), everything else as in ``assign`` with true-literal
        ``counts``. Gathers each candidate's clauses through the CSR index and re-evaluates
        exactly those (a clause shared by two of its variables is counted once).
        """
        inst = self.instance
        variables = torch.as_tensor(variables, dtype=torch.int64)
        values = torch.as_tensor(values, dtype=torch.bool)
        n_cand, s = variables.shape
        starts, ends = self.var_ptr[variables], self.var_ptr[variables + 1]
        lens = (ends - starts).reshape(-1)
        owner = torch.repeat_interleave(torch.arange(n_cand * s), lens)          # (candidate, slot) of each entry
        offs = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        entry = starts.reshape(-1)[owner] + offs
        cand = owner // s
        clause = self.clause[entry].to(torch.int64)
        # drop repeated (candidate, clause) pairs: each affected clause is re-checked once
        key = cand * inst.n_clauses + clause
        key_u, first = _unique_first(key)
        cand_u, clause_u = cand[first], clause[first]
        # re-evaluate those clauses' literals with the candidate's values substituted
        ptr = inst.clause_ptr
        clen = (ptr[clause_u + 1] - ptr[clause_u])
        lit_owner = torch.repeat_interleave(torch.arange(clause_u.numel()), clen)
        lit_idx = ptr[clause_u][lit_owner] + torch.arange(int(clen.sum())) - \
            torch.repeat_interleave(torch.cumsum(clen, 0) - clen, clen)
        lv = inst.lit_var[lit_idx].to(torch.int64)
        cv = variables[cand_u[lit_owner]]                                          # [L, s]
        hit = cv == lv[:, None]
        sub = (hit & values[cand_u[lit_owner]]).any(1)
        val = torch.where(hit.any(1), sub, assign[lv])
        new_true = torch.zeros(clause_u.numel(), dtype=torch.int32)
        new_true.index_add_(0, lit_owner, (val ^ inst.lit_neg[lit_idx]).to(torch.int32))
        was_unsat = counts[clause_u] == 0
        now_unsat = new_true == 0
        change = now_unsat.to(torch.float64) - was_unsat.to(torch.float64)
        w = inst.cost_weights()
        if w is not None:
            change = change * w[clause_u]
        out = torch.zeros(n_cand, dtype=torch.float64)
        out.index_add_(0, cand_u, change)
        return out


def _unique_first(key: torch.Tensor):
    """Sorted unique keys and the index of one occurrence of each."""
    order = torch.argsort(key, stable=True)
    sk = key[order]
    first = torch.ones_like(sk, dtype=torch.bool)
    first[1:] = sk[1:] != sk[:-1]
    return sk[first], order[first]


class BlockDelta:
    """Cost change of every candidate of a PolyStep full-space step at once.

    Variables are cut into blocks of ``block`` consecutive variables (the
    particles; the last block may be short). Candidate ``(b, v)`` rewrites
    block ``b`` with column ``v`` of ``values[b*block:(b+1)*block]``; every
    other variable keeps its value in ``assign``.

    Only the clauses that contain a changed variable can change. Given each
    clause's true-literal count, flipping one literal *breaks* its clause when
    it was the clause's only true literal and *makes* it when the clause had
    none; so each variable's flip changes the cost by ``score_u = break_u -
    make_u`` (weighted), computed for all variables in one pass over the
    literals, and a candidate's change is the sum of the scores of the
    variables it flips. Clauses with two or more literals in one block (rare:
    the single-flip sum would count them twice) are re-evaluated exactly.
    """

    def __init__(self, instance: MaxSATInstance, block: int = 2):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be an int >= 1, got {block!r}")
        self.instance, self.block = instance, block
        self.n_blocks = -(-instance.n_vars // block)
        self._find_shared_clauses()

    def _find_shared_clauses(self) -> None:
        inst = self.instance
        blk = (inst.lit_var // self.block).to(torch.int64)
        key = inst.clause_of_lit.to(torch.int64) * self.n_blocks + blk
        k = inst.uniform_k
        if k is not None:  # literals of a clause are contiguous: compare within rows
            kb = key.view(-1, k)
            shared = torch.zeros_like(kb, dtype=torch.bool)
            for i in range(k):
                for j in range(i + 1, k):
                    same = kb[:, i] == kb[:, j]
                    shared[:, i] |= same
                    shared[:, j] |= same
            pos = shared.reshape(-1).nonzero().squeeze(1)
        else:
            order = torch.argsort(key, stable=True)
            sk = key[order]
            dup = torch.zeros_like(sk, dtype=torch.bool)
            dup[1:] = sk[1:] == sk[:-1]
            dup[:-1] |= sk[:-1] == sk[1:]
            pos = order[dup]
        _, group = torch.unique(key[pos], return_inverse=True)
        self.shared_lit = pos                                           # literal positions (clause order)
        self.shared_group = group                                       # group id per literal
        self.n_groups = int(group.max()) + 1 if group.numel() else 0
        self.group_clause = torch.zeros(self.n_groups, dtype=torch.int64)
        self.group_block = torch.zeros(self.n_groups, dtype=torch.int64)
        if self.n_groups:
            self.group_clause[group] = inst.clause_of_lit[pos].to(torch.int64)
            self.group_block[group] = blk[pos]

    def prepare(self, assign: torch.Tensor):
        """One pass over the literals: ``(counts, cost, scores)`` of ``assign`` — true-literal counts
        per clause, the full cost, and :meth:`flip_scores`."""
        inst = self.instance
        lt = inst.literal_true(assign)
        k = inst.uniform_k
        if k is not None:
            counts = lt.view(-1, k).sum(1, dtype=torch.int16)
        else:
            counts = inst.true_counts(assign)
        return counts, inst.cost_from_counts(counts), self.flip_scores(assign, counts, lt)

    def flip_scores(self, assign: torch.Tensor, counts: torch.Tensor,
                    lt: Optional[torch.Tensor] = None) -> torch.Tensor:
        """float64 ``[n]``: cost change of flipping each variable alone (break minus make, weighted)."""
        inst = self.instance
        if lt is None:
            lt = inst.literal_true(assign)
        k = inst.uniform_k
        if k is not None:
            c = counts.view(-1, 1)
            crit = (lt.view(-1, k) & (c == 1)).to(torch.int8) - (c == 0).to(torch.int8)
            crit = crit.reshape(-1)
        else:
            c = counts[inst.clause_of_lit]
            crit = (lt & (c == 1)).to(torch.int8) - (c == 0).to(torch.int8)
        w = inst.cost_weights()
        if w is None:
            score = torch.zeros(inst.n_vars, dtype=torch.int32)
            score.index_add_(0, inst.lit_var, crit.to(torch.int32))
            return score.to(torch.float64)
        nz = crit.nonzero().squeeze(1)
        score = torch.zeros(inst.n_vars, dtype=torch.float64)
        score.index_add_(0, inst.lit_var[nz], crit[nz].to(torch.float64) * w[inst.clause_of_lit[nz].to(torch.int64)])
        return score

    def deltas(self, assign: torch.Tensor, counts: torch.Tensor, values: torch.Tensor,
               scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cost change ``[n_blocks, V]`` (float64) of every candidate relative to ``assign``.

        ``assign`` bool ``[n]``, ``counts`` its true-literal counts per clause
        (:meth:`MaxSATInstance.true_counts`), ``values`` bool ``[n, V]`` or
        ``[n_blocks * block, V]`` (padding rows are ignored).
        """
        n = self.instance.n_vars
        flips = values[:n] ^ assign[:, None]                          # [n, V]: which candidates flip var
        if scores is None:
            scores = self.flip_scores(assign, counts)
        per_var = flips.to(torch.float64) * scores[:, None]
        pad = self.n_blocks * self.block - n
        if pad:
            per_var = torch.cat([per_var, per_var.new_zeros(pad, per_var.shape[1])])
        out = per_var.view(self.n_blocks, self.block, -1).sum(1)
        if self.n_groups:
            out.index_add_(0, self.group_block, self._shared_correction(assign, counts, flips))
        return out

    def _shared_correction(self, assign, counts, flips) -> torch.Tensor:
        """Per group ``[G, V]``: exact change minus the single-flip sum for clauses with several
        literals in one block."""
        inst = self.instance
        lits = self.shared_lit
        var = inst.lit_var[lits].to(torch.int64)
        lt = assign[var] ^ inst.lit_neg[lits]
        cnt = counts[inst.clause_of_lit[lits].to(torch.int64)].to(torch.int64)
        fl = flips[var]                                                  # [g, V]
        crit = (lt & (cnt == 1)).to(torch.float64) - (cnt == 0).to(torch.float64)
        naive = torch.zeros(self.n_groups, fl.shape[1], dtype=torch.float64)
        naive.index_add_(0, self.shared_group, fl.to(torch.float64) * crit[:, None])
        change = fl.to(torch.int64) * (1 - 2 * lt.to(torch.int64))[:, None]   # +1 false->true, -1 true->false
        total = torch.zeros(self.n_groups, fl.shape[1], dtype=torch.int64)
        total.index_add_(0, self.shared_group, change)
        base = counts[self.group_clause].to(torch.int64)
        exact = ((base[:, None] + total) == 0).to(torch.float64) - (base == 0).to(torch.float64)[:, None]
        w = inst.cost_weights()
        diff = exact - naive
        return diff if w is None else diff * w[self.group_clause][:, None]


__all__ = ["MaxSATInstance", "MaxSATProblem", "BlockCosts", "hard_assignment", "ENCODINGS", "COST_SCALES",
           "MAX_VARS", "MAX_WEIGHT", "random_ksat", "read_dimacs", "write_dimacs", "format_solution", "write_solution",
           "parse_solution", "VarClauseIndex", "BlockDelta", "DEFAULT_RATIO"]
