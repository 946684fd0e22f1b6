"""Integer EGGROLL and the EGG language model (eggroll.md section 2).

EGG is a pre-LN int8 minGRU byte model with no activation functions::

    embedding -> L x [LN -> GRU -> residual, LN -> MLP(D -> 4D -> D) -> residual] -> LN -> head

* Weights and activations are int8 in [-127, 127]; products accumulate in int32.
  ``x @ W`` is ``clip(acc >> log2(16 sqrt(n)))`` (n a power of 4, so the division is a shift).
* LN divides ``x * w`` by the mean absolute value through a lookup table; the GRU's
  sigmoid and tanh are the identity; clipping is the only nonlinearity.
* The loss is integer too: with ``y' = logits + 128``, the log-likelihood of the
  target in 1/16 bits is ``y'[t] - LOG2(sum EXP2[y'])``.
* A member perturbs a matrix by ``((x B) A^T) >> (4 + sigma_shift)`` (int8 factors
  ``round(16 N(0,1))``, sign on A), a vector by ``(eps1 * eps2) >> (4 + sigma_shift)``.
* The update is the sign of the pair difference ``F_k = sign(R_2k - R_2k+1)``,
  ``Z = sum_k F_k A_k B_k^T`` in integers, and ``theta <- clip(theta + sign(Z))``
  where ``|Z| * 16 >= tau_t * isqrt(N/2) * 256`` (a z-test, about a fraction
  alpha_t of entries move), ``tau_t = int(16 Phi^-1(1 - alpha_t/2))``,
  ``alpha_t = 1 / ((2^alpha - 1) t / 1000 + 1)``.

Deviations from the reference code, all documented: noise comes from the keyed
Philox generator through an exact inverse-CDF table of ``round(16 N(0, 1))``
(:func:`zoopt.kernels.int_noise`) instead of a 1 GiB pre-drawn table; LOG2 is
computed from the bit length plus a 1024-entry mantissa table instead of a
2^28-entry table (same values up to rounding of the last 1/16 bit); each
generation starts every member's state at zero on a fresh window (no state
carried across generations).

``matmul="float"`` (default) runs int8 x int8 products in a float32 GEMM, which
is exact while ``n * 127^2 < 2^24`` (n <= 1040) and is checked; results are cast
straight back to int32. ``matmul="int"`` uses torch's int32 matmul (slow on CPU);
the two agree bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoopt.kernels import int_noise

from .noise import noise_epoch, tensor_id_for

I8 = 127
EXACT_FLOAT_LIMIT = 1 << 24


@dataclass
class EggConfig:
    vocab: int = 256
    dim: int = 64            # a power of 4: 16, 64, 256
    layers: int = 2
    sigma_shift: int = 4     # sigma = 2^-sigma_shift
    alpha: float = 4.0       # threshold schedule (see module doc)
    noise_reuse: int = 1
    matmul: str = "float"    # "float" (exact float32 GEMM) or "int"

    def __post_init__(self):
        d = self.dim
        if d < 4 or 4 ** round(math.log(d, 4)) != d:
            raise ValueError(f"dim must be a power of 4 (16, 64, 256, ...), got {d}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.vocab < 2 or self.vocab > 256:
            raise ValueError(f"vocab must be in [2, 256], got {self.vocab}")
        if not 0 <= self.sigma_shift <= 12:
            raise ValueError(f"sigma_shift must be in [0, 12], got {self.sigma_shift}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.matmul not in ("float", "int"):
            raise ValueError(f"matmul must be 'float' or 'int', got {self.matmul!r}")


# -- integer primitives ---------------------------------------------------------------
def clip8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-I8, I8).to(torch.int8)


def int_mm(a: torch.Tensor, b: torch.Tensor, mode: str = "float") -> torch.Tensor:
    """Exact integer ``a @ b`` (int32 result) for int8-range operands ``a [..., k]``, ``b [k, m]``."""
    if mode == "int":
        return torch.matmul(a.to(torch.int32), b.to(torch.int32))
    k = a.shape[-1]
    if k * I8 * I8 >= EXACT_FLOAT_LIMIT:
        raise ValueError(f"inner dimension {k} too large for the exact float32 path; use matmul='int'")
    return torch.matmul(a.to(torch.float32), b.to(torch.float32)).to(torch.int32)


def shift_for(n: int) -> int:
    """log2(16 * sqrt(n)) for n a power of 4."""
    return 4 + int(round(math.log2(n))) // 2


def clipped_add(*xs) -> torch.Tensor:
    total = xs[0].to(torch.int32)
    for x in xs[1:]:
        total = total + x.to(torch.int32)
    return clip8(total)


def build_divide_table() -> torch.Tensor:
    """DIVIDE[u, v + 2^15] = clip(v // u) for u in [0, 127] (row 0 unused), v in int16: int8 [128, 65536]."""
    v = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32)
    u = torch.arange(128, dtype=torch.int32).clamp(min=1)
    return clip8(torch.div(v[None, :], u[:, None], rounding_mode="floor"))


def build_exp2_table() -> torch.Tensor:
    """EXP2[i] = round(16 * 2^(i/16)), i in [0, 255] (int32)."""
    return torch.round(16 * torch.pow(2.0, torch.arange(256, dtype=torch.float64) / 16)).to(torch.int32)


def build_log2_mantissa(bits: int = 10) -> torch.Tensor:
    """MANT[j] = round(16 * log2(1 + j / 2^bits)) (int32)."""
    j = torch.arange(1 << bits, dtype=torch.float64)
    return torch.round(16 * torch.log2(1 + j / (1 << bits))).to(torch.int32)


def int_log2_16(s: torch.Tensor, mantissa: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """``16 * log2(s / 16)`` rounded, for positive int64 ``s``, in integers only."""
    s = s.to(torch.int64)
    e = torch.zeros_like(s)
    t = s.clone()
    for step in (32, 16, 8, 4, 2, 1):           # e = floor(log2 s) by binary search on the bits
        big = t >= (1 << step)
        e = e + big.to(torch.int64) * step
        t = torch.where(big, t >> step, t)
    # top `bits` bits below the leading one
    frac = torch.where(e >= bits, (s >> (e - bits).clamp(min=0)), s << (bits - e).clamp(min=0)) - (1 << bits)
    return (16 * (e - 4) + mantissa[frac.clamp(0, (1 << bits) - 1)]).to(torch.int32)


class IntTables:
    """The lookup tables (built once, ~8 MB)."""

    def __init__(self):
        self.divide = build_divide_table().reshape(-1)
        self.exp2 = build_exp2_table()
        self.mantissa = build_log2_mantissa()

    def layer_norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``DIVIDE[mean|x|][x * w]``; ``w`` broadcasts against ``x [..., D]``."""
        d = x.shape[-1]
        u = (x.to(torch.int32).abs().sum(-1, keepdim=True) // d).clamp(1, I8)
        v = x.to(torch.int32) * w.to(torch.int32)                   # |v| <= 127^2: an int16
        return self.divide[u * 65536 + v + 32768]

    def log_likelihood(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Target log-likelihood in 1/16 bits (int32), ``logits`` int8 ``[..., V]``."""
        y = logits.to(torch.int64) + 128                             # [1, 255]
        total = self.exp2[y].to(torch.int64).sum(-1)
        picked = torch.gather(y, -1, targets.unsqueeze(-1).to(torch.int64)).squeeze(-1)
        return (picked - int_log2_16(total, self.mantissa)).to(torch.int32)


_TABLES = None


def tables() -> IntTables:
    global _TABLES
    if _TABLES is None:
        _TABLES = IntTables()
    return _TABLES


# -- the model ------------------------------------------------------------------------------
def param_shapes(cfg: EggConfig) -> dict:
    D, V = cfg.dim, cfg.vocab
    shapes = {"emb": (V, D)}
    for l in range(cfg.layers):
        shapes.update({f"l{l}.ln1": (D,), f"l{l}.wf": (D, D), f"l{l}.uf": (D, D), f"l{l}.bf": (D,),
                       f"l{l}.wh": (D, D), f"l{l}.uh": (D, D), f"l{l}.bh": (D,), f"l{l}.ln2": (D,),
                       f"l{l}.mlp_in": (4 * D, D), f"l{l}.mlp_out": (D, 4 * D)})
    shapes.update({"ln_out": (D,), "head": (V, D)})
    return shapes


def init_params(cfg: EggConfig, seed: int = 0) -> dict:
    """Matrices ``round(16 N(0,1))`` clipped to int8; LN weights 16; GRU biases 0."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.split(".")[-1]
        if leaf.startswith("ln") or leaf == "ln_out":
            params[name] = torch.full(shape, 16, dtype=torch.int8)
        elif len(shape) == 1:
            params[name] = torch.zeros(shape, dtype=torch.int8)
        else:
            params[name] = clip8(torch.round(16 * torch.randn(*shape, generator=g)))
    return params


def param_count(cfg: EggConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


class IntNoise:
    """Integer perturbations of one generation for a set of members (member-major)."""

    def __init__(self, members: torch.Tensor, seed: int, generation: int, cfg: EggConfig):
        self.members = torch.as_tensor(members, dtype=torch.int64)
        self.pairs = self.members // 2
        self.signs = (1 - 2 * (self.members % 2)).to(torch.int32)   # +1 even, -1 odd
        self.seed, self.epoch, self.cfg = seed, noise_epoch(generation, cfg.noise_reuse), cfg
        self.shift = 4 + cfg.sigma_shift
        self._cache: dict = {}

    def int8_normal(self, name: str, numel: int, pairs=None) -> torch.Tensor:
        """Keyed int8 ``round(16 N(0, 1))`` on [-127, 127] (:func:`zoopt.kernels.int_noise`, CUDA kernel on GPUs)."""
        pairs = self.pairs if pairs is None else pairs
        return int_noise(self.seed, tensor_id_for(name), self.epoch, pairs, numel)

    def factors(self, name: str, m: int, n: int):
        """Signed ``A [N, m]`` (int32) and ``B [N, n]`` (int8) of each member (rank 1); drawn once per
        forward (a recurrent matrix is used at every step)."""
        if name not in self._cache:
            z = self.int8_normal(name, n + m)
            self._cache[name] = (z[:, n:].to(torch.int32) * self.signs[:, None], z[:, :n])
        return self._cache[name]

    def vector(self, name: str, numel: int) -> torch.Tensor:
        """Each member's vector perturbation ``s * (eps1 * eps2) >> shift`` (int32 ``[N, numel]``)."""
        z = self.int8_normal(name, 2 * numel).to(torch.int32)
        return (self.signs[:, None] * z[:, :numel] * z[:, numel:]) >> self.shift


class EggLM:
    """The int8 EGG model; ``forward(tokens [N, T], noise)`` returns int8 logits ``[N, T, V]``."""

    def __init__(self, cfg: EggConfig, params: dict | None = None, seed: int = 0):
        self.cfg = cfg
        self.params = params if params is not None else init_params(cfg, seed)
        self.t = tables()

    def _matmul(self, x: torch.Tensor, name: str, noise: IntNoise | None) -> torch.Tensor:
        """``clip((x W^T + ((x B) A^T >> shift)) >> log2(16 sqrt(n)))`` per member; x int8 [N, ..., n]."""
        W = self.params[name]
        m, n = W.shape
        acc = int_mm(x, W.t(), self.cfg.matmul)                                  # int32
        if noise is not None:
            A, B = noise.factors(name, m, n)
            xb = int_mm(x.reshape(x.shape[0], -1, n), B.unsqueeze(-1), self.cfg.matmul)  # [N, rows, 1]
            corr = (xb * A.unsqueeze(1)) >> noise.shift                            # [N, rows, m]
            acc = acc + corr.reshape(acc.shape)
        return clip8(acc >> shift_for(n))

    def _vector(self, name: str, noise: IntNoise | None, ndim: int) -> torch.Tensor:
        v = self.params[name]
        if noise is None:
            return v
        member = clip8(v.to(torch.int32) + noise.vector(name, v.numel()))       # [N, D]
        return member.reshape(member.shape[0], *([1] * (ndim - 2)), -1)

    def _embed(self, tokens: torch.Tensor, noise: IntNoise | None) -> torch.Tensor:
        E = self.params["emb"]
        rows = E[tokens]                                                           # [N, T, D]
        if noise is None:
            return rows
        V, D = E.shape
        A, B = noise.factors("emb", V, D)                                          # A [N, V], B [N, D]
        a = torch.gather(A, 1, tokens.to(torch.int64))                             # [N, T]
        corr = (a.unsqueeze(-1) * B.to(torch.int32).unsqueeze(1)) >> noise.shift
        return clip8(rows.to(torch.int32) + corr)

    def forward(self, tokens: torch.Tensor, noise: IntNoise | None = None) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [members, T], got shape {tuple(tokens.shape)}")
        t = self.t
        h = self._embed(tokens, noise)
        N, T, D = h.shape
        for l in range(self.cfg.layers):
            p = f"l{l}."
            a = t.layer_norm(h, self._vector(p + "ln1", noise, 3))
            gx_f = self._matmul(a, p + "wf", noise)                               # all steps in one GEMM
            gx_h = self._matmul(a, p + "wh", noise)
            bf, bh = self._vector(p + "bf", noise, 2), self._vector(p + "bh", noise, 2)
            s = torch.zeros(N, 1, D, dtype=torch.int8)
            outs = []
            for step in range(T):
                f = clipped_add(gx_f[:, step:step + 1], self._matmul(s, p + "uf", noise), bf.unsqueeze(1) if bf.dim() == 2 else bf)
                f1 = f.to(torch.int32) + I8                                        # [0, 254]: the "sigmoid"
                f_hat = clip8((f1 * s.to(torch.int32)) >> 8)
                h_hat = clipped_add(gx_h[:, step:step + 1], self._matmul(f_hat, p + "uh", noise),
                                    bh.unsqueeze(1) if bh.dim() == 2 else bh)
                s = clip8(s.to(torch.int32) + ((f1 * (h_hat.to(torch.int32) - s.to(torch.int32))) >> 8))
                outs.append(s)
            h = clipped_add(h, torch.cat(outs, 1))
            b = t.layer_norm(h, self._vector(p + "ln2", noise, 3))
            h = clipped_add(h, self._matmul(self._matmul(b, p + "mlp_in", noise), p + "mlp_out", noise))
        out = t.layer_norm(h, self._vector("ln_out", noise, 3))
        return self._matmul(out, "head", noise)

    def log_likelihood(self, tokens: torch.Tensor, targets: torch.Tensor, noise: IntNoise | None = None):
        """Summed target log-likelihood per row in 1/16 bits (int32 ``[N]``)."""
        return self.t.log_likelihood(self.forward(tokens, noise), targets).sum(-1, dtype=torch.int32)


# -- the integer ES update ---------------------------------------------------------------------
def alpha_at(alpha: float, step: int) -> float:
    """alpha_t = 1 / ((2^alpha - 1) t / 1000 + 1) for alpha > 1; fixed alpha otherwise."""
    if alpha > 1:
        return 1.0 / ((2 ** alpha - 1) * step / 1000 + 1)
    return alpha


def tau_at(alpha: float, step: int) -> int:
    """tau_t = int(16 * Phi^-1(1 - alpha_t / 2)) (a host-side scalar of the schedule)."""
    from scipy.stats import norm

    return int(16 * norm.ppf(1 - alpha_at(alpha, step) / 2))


class IntegerEGGROLL:
    """Integer ES for :class:`EggLM` (see module doc): ``fitness(members)`` -> ``tell``."""

    def __init__(self, model: EggLM, popsize: int = 512, seed: int = 0, group_size: int = 2):
        if popsize < 2 or popsize % 2:
            raise ValueError(f"popsize must be even and >= 2, got {popsize}")
        if group_size < 2 or group_size % 2 or popsize % group_size:
            raise ValueError(f"group_size must be even and divide popsize={popsize}, got {group_size}")
        self.model, self.popsize, self.seed, self.group_size = model, popsize, seed, group_size
        self.generation = 0
        self.last_moved = 0.0

    def noise(self, members=None) -> IntNoise:
        members = torch.arange(self.popsize) if members is None else torch.as_tensor(members)
        return IntNoise(members, self.seed, self.generation, self.model.cfg)

    def fitness(self, inputs: torch.Tensor, targets: torch.Tensor, members=None) -> torch.Tensor:
        """Summed log-likelihood (int32, higher is better) of each member on its rows of
        ``inputs/targets [popsize / group_size, T]`` (group_size consecutive members share a row)."""
        members = torch.arange(self.popsize) if members is None else torch.as_tensor(members)
        rows = members // self.group_size
        return self.model.log_likelihood(inputs[rows], targets[rows], self.noise(members))

    def accumulate(self, fitness: torch.Tensor) -> dict:
        """``{name: Z}`` (int64, the parameter's shape): ``Z = sum_k F_k A_k B_k^T`` for matrices,
        ``sum_k F_k eps1_k eps2_k`` for vectors, with ``F_k = sign(R_2k - R_2k+1)`` from int fitness ``[popsize]``."""
        fitness = torch.as_tensor(fitness)
        if fitness.shape != (self.popsize,):
            raise ValueError(f"fitness must have shape ({self.popsize},), got {tuple(fitness.shape)}")
        if fitness.is_floating_point():
            raise TypeError("fitness must be an integer tensor on the integer path")
        F = torch.sign(fitness[0::2].to(torch.int64) - fitness[1::2].to(torch.int64)).to(torch.int32)  # [P]
        P = F.numel()
        noise = IntNoise(torch.arange(0, self.popsize, 2), self.seed, self.generation, self.model.cfg)
        out = {}
        for name, theta in self.model.params.items():
            if theta.dim() == 2:
                m, n = theta.shape
                z = noise.int8_normal(name, n + m)                                 # pair factors (sign +)
                A, B = z[:, n:].to(torch.int32), z[:, :n].to(torch.int32)
                mode = self.model.cfg.matmul if P * I8 * I8 < EXACT_FLOAT_LIMIT else "int"
                out[name] = int_mm((A * F[:, None]).t(), B, mode).to(torch.int64)      # [m, n], exact
            else:
                z = noise.int8_normal(name, 2 * theta.numel()).to(torch.int64)
                out[name] = (F[:, None].to(torch.int64) * z[:, :theta.numel()] * z[:, theta.numel():]).sum(0)
        return out

    def tell(self, fitness: torch.Tensor) -> dict:
        """Apply the sign-of-pair-difference update from int fitness ``[popsize]``."""
        fitness = torch.as_tensor(fitness)
        P = self.popsize // 2
        tau = tau_at(self.model.cfg.alpha, self.generation)
        bound = tau * math.isqrt(P) * 256
        moved = total = 0
        for name, Z in self.accumulate(fitness).items():
            theta = self.model.params[name]
            step = torch.sign(Z) * (Z.abs() * 16 >= bound)
            self.model.params[name] = clip8(theta.to(torch.int32) + step.to(torch.int32))
            moved += int((step != 0).sum())
            total += theta.numel()
        self.generation += 1
        self.last_moved = moved / total
        return {"generation": self.generation, "tau": tau, "moved_fraction": self.last_moved,
                "mean_fitness": float(fitness.double().mean())}

    def state_dict(self) -> dict:
        return {"generation": self.generation, "seed": self.seed,
                "params": {k: v.clone() for k, v in self.model.params.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.generation, self.seed = state["generation"], state["seed"]
        self.model.params = {k: v.clone() for k, v in state["params"].items()}


def bits_per_byte(model: EggLM, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 64) -> float:
    """The center's loss in bits/byte on rows ``[B, T]`` (from the integer log-likelihood)."""
    total, count = 0, 0
    for s in range(0, inputs.shape[0], chunk):
        ll = model.log_likelihood(inputs[s:s + chunk], targets[s:s + chunk])
        total += int(ll.to(torch.int64).sum())
        count += targets[s:s + chunk].numel()
    return -total / 16 / count
