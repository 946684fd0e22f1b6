"""Policies for RL policy search: linear and MLP-tanh networks over a flat search vector.

A :class:`Policy` is a pure description (its :class:`PolicyConfig`); weights
live in a flat float32 vector laid out layer by layer as ``W (out x in,
row-major)`` then ``b (out)``. Whole populations act at once: ``layers(flat)``
turns ``[M, D]`` vectors into per-layer ``[M, out, in]`` weights and
``act(layers, obs)`` runs ``[M, B, obs_dim]`` observations through one batched
matmul per layer.

Quantized variants keep a float "latent" vector as the search space and map it
to the weights the network really uses:

* ``int8``: per-tensor (per member) scale ``s = max|W| / 127``,
  ``q = clamp(round(W / s), -127, 127)`` held as int8; the layer uses ``q * s``.
* ``binary``: ``q = sign(W)`` in {-1, +1} (zero counts as +1) held as int8,
  ``s = mean|W|``; the layer uses ``q * s``.

Only weight matrices are quantized; biases stay float32. ``save_policy`` writes
the weights the network uses (int8 tensors plus float32 scales for quantized
policies) as ``weights.npz`` next to ``policy.json`` (the config and the
observation normalizer), and ``load_policy`` brings them back.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

ARCHS = ("linear", "mlp")
HEADS = ("discrete", "continuous")
QUANTS = ("none", "int8", "binary")
INT8_MAX = 127


@dataclass
class PolicyConfig:
    """Everything that defines a policy's shape and behaviour (JSON-serializable)."""

    obs_dim: int
    act_dim: int
    arch: str = "linear"
    hidden: Sequence[int] = (64,)
    head: str = "discrete"
    low: Optional[list] = None     # continuous head: action bounds, one per action dimension
    high: Optional[list] = None
    quant: str = "none"
    bias: bool = True

    def __post_init__(self):
        for name in ("obs_dim", "act_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"policy arch must be one of {ARCHS}, got {self.arch!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS}, got {self.quant!r}")
        self.hidden = tuple(int(h) for h in (self.hidden if self.arch == "mlp" else ()))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")
        if self.arch == "mlp" and not self.hidden:
            raise ValueError("an mlp policy needs at least one hidden layer")
        if self.head == "continuous":
            if self.low is None or self.high is None:
                raise ValueError("a continuous head needs action bounds low and high")
            low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
            if low.shape != (self.act_dim,) or high.shape != (self.act_dim,):
                raise ValueError(f"low and high must have {self.act_dim} entries, got {low.shape} and {high.shape}")
            if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
                raise ValueError("a continuous head needs finite action bounds with high > low")
            self.low, self.high = low.tolist(), high.tolist()

    def to_json(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def quantize(w: torch.Tensor, quant: str):
    """Per-member quantization of weights ``[M, out, in]`` -> (int8 codes, float32 scales ``[M]``)."""
    absw = w.abs()
    if quant == "int8":
        scale = absw.amax(dim=(1, 2)) / INT8_MAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / scale[:, None, None]), -INT8_MAX, INT8_MAX)
    elif quant == "binary":
        scale = absw.mean(dim=(1, 2))
        q = torch.where(w >= 0, 1.0, -1.0)
    else:
        raise ValueError(f"quant must be 'int8' or 'binary' here, got {quant!r}")
    return q.to(torch.int8), scale.to(torch.float32)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[M, out, in]`` and scales ``[M]`` -> float32 weights used by the layer."""
    return q.to(torch.float32) * scale.to(torch.float32)[:, None, None]


class Policy:
    """Flat-vector <-> network mapping and batched population forward for a :class:`PolicyConfig`."""

    def __init__(self, config: PolicyConfig):
        if not isinstance(config, PolicyConfig):
            raise TypeError(f"config must be a PolicyConfig, got {type(config).__name__}")
        self.config = config
        sizes = [config.obs_dim, *config.hidden, config.act_dim]
        self.shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
        per_layer = [o * i + (o if config.bias else 0) for o, i in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(per_layer)]).astype(int).tolist()
        self.dim = int(self.offsets[-1])
        # the tensors of the flat vector in order: W (out, in), then b (out,) when biased
        self.param_shapes = [s for o, i in self.shapes for s in ([(o, i), (o,)] if config.bias else [(o, i)])]
        if config.head == "continuous":
            self._low = torch.tensor(config.low, dtype=torch.float32)
            self._half = torch.tensor([(h - l) / 2 for l, h in zip(config.low, config.high)], dtype=torch.float32)

    @classmethod
    def for_spaces(cls, observation_space, action_space, arch: str = "linear", hidden=(64,),
                   quant: str = "none", bias: bool = True) -> "Policy":
        """Build the policy that fits a Gymnasium env's spaces (Box observations; Discrete or Box actions)."""
        from gymnasium import spaces

        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"policies need a flat Box observation space, got {observation_space}")
        if isinstance(action_space, spaces.Discrete):
            cfg = PolicyConfig(int(observation_space.shape[0]), int(action_space.n), arch, hidden, "discrete",
                               quant=quant, bias=bias)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            cfg = PolicyConfig(int(observation_space.shape[0]), int(action_space.shape[0]), arch, hidden,
                               "continuous", action_space.low.tolist(), action_space.high.tolist(), quant, bias)
        else:
            raise ValueError(f"policies need a Discrete or flat Box action space, got {action_space}")
        return cls(cfg)

    # -- flat vector <-> layers ----------------------------------------------------
    def initial_point(self, seed: int = 0) -> torch.Tensor:
        """Zeros for linear policies; for MLPs, uniform(+-1/sqrt(fan_in)) hidden weights from ``seed``
        and a zero output layer (the first actions do not depend on the random hidden features)."""
        flat = torch.zeros(self.dim)
        if self.config.arch == "mlp":
            gen = torch.Generator().manual_seed(int(seed))
            for li, (out, inp) in enumerate(self.shapes[:-1]):
                start = self.offsets[li]
                bound = 1.0 / math.sqrt(inp)
                flat[start:start + out * inp] = (torch.rand(out * inp, generator=gen) * 2 - 1) * bound
        return flat

    def split(self, flat: torch.Tensor):
        """``[M, D]`` -> list of (latent W ``[M, out, in]``, b ``[M, out]`` or None)."""
        if flat.dim() != 2 or flat.shape[1] != self.dim:
            raise ValueError(f"flat parameters must have shape [M, {self.dim}], got {tuple(flat.shape)}")
        out = []
        for li, (o, i) in enumerate(self.shapes):
            start = self.offsets[li]
            w = flat[:, start:start + o * i].reshape(-1, o, i)
            b = flat[:, start + o * i:start + o * i + o] if self.config.bias else None
            out.append((w, b))
        return out

    def layers(self, flat: torch.Tensor):
        """The weights the network really uses for ``[M, D]`` latent vectors (quantized if configured)."""
        parts = self.split(flat.to(torch.float32))
        if self.config.quant == "none":
            return parts
        return [(dequantize(*quantize(w, self.config.quant)), b) for w, b in parts]

    # -- forward -------------------------------------------------------------------
    def forward(self, layers, obs: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[M, B, act_dim]`` for observations ``[M, B, obs_dim]`` (one bmm per layer)."""
        h = obs
        last = len(layers) - 1
        for li, (w, b) in enumerate(layers):
            h = torch.bmm(h, w.transpose(1, 2))
            if b is not None:
                h = h + b[:, None, :]
            if li < last:
                h = torch.tanh(h)
        return h

    def head(self, out: torch.Tensor) -> torch.Tensor:
        """Actions from raw outputs: argmax (int64) or tanh scaled to the action bounds (float32)."""
        if self.config.head == "discrete":
            return out.argmax(dim=-1)
        return self._low + (torch.tanh(out) + 1.0) * self._half

    def act(self, layers, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(layers, obs))

    # -- export --------------------------------------------------------------------
    def export(self, flat: torch.Tensor) -> dict:
        """Arrays to save for one latent vector ``[D]``: float32 weights, or int8 codes + float32 scales."""
        arrays = {}
        for li, (w, b) in enumerate(self.split(flat.detach().to(torch.float32).reshape(1, -1).cpu())):
            if self.config.quant == "none":
                arrays[f"w{li}"] = w[0].numpy().copy()
            else:
                q, scale = quantize(w, self.config.quant)
                arrays[f"q{li}"] = q[0].numpy().copy()
                arrays[f"scale{li}"] = scale.numpy().copy()
            if b is not None:
                arrays[f"b{li}"] = b[0].numpy().copy()
        return arrays

    def layers_from_arrays(self, arrays: dict):
        """Layers ``[1, ...]`` from exported arrays (the inverse of :meth:`export`)."""
        layers = []
        for li, _ in enumerate(self.shapes):
            if self.config.quant == "none":
                w = torch.from_numpy(np.asarray(arrays[f"w{li}"], dtype=np.float32))[None]
            else:
                q = np.asarray(arrays[f"q{li}"])
                if q.dtype != np.int8:
                    raise ValueError(f"quantized layer {li} must hold int8 codes, got {q.dtype}")
                w = dequantize(torch.from_numpy(q)[None], torch.from_numpy(np.asarray(arrays[f"scale{li}"])))
            b = torch.from_numpy(np.asarray(arrays[f"b{li}"], dtype=np.float32))[None] if self.config.bias else None
            layers.append((w, b))
        return layers


@dataclass
class ObsNormalizer:
    """Frozen observation normalization used by a policy: ``clip((obs - mean) / std, -clip, clip)``."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = 10.0
    count: float = 0.0

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        mean = torch.from_numpy(np.asarray(self.mean, dtype=np.float32))
        std = torch.from_numpy(np.asarray(self.std, dtype=np.float32))
        return torch.clamp((obs.to(torch.float32) - mean) / std, -self.clip, self.clip)

    @classmethod
    def identity(cls, dim: int) -> "ObsNormalizer":
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32), clip=math.inf)


@dataclass
class SavedPolicy:
    """A policy ready to act: config, the weights it uses, and its observation normalizer."""

    policy: Policy
    layers: list
    normalizer: ObsNormalizer
    meta: dict = field(default_factory=dict)

    def act(self, obs) -> np.ndarray:
        """Actions for a batch of observations ``[B, obs_dim]`` (or a single ``[obs_dim]``)."""
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        single = o.dim() == 1
        o = o.reshape(1, -1, self.policy.config.obs_dim)
        with torch.no_grad():
            a = self.policy.act(self.layers, self.normalizer(o))[0]
        a = a.numpy()
        return a[0] if single else a


def save_policy(path: str, policy: Policy, flat: torch.Tensor, normalizer: Optional[ObsNormalizer] = None,
                meta: Optional[dict] = None) -> str:
    """Write ``path/policy.json`` (config, normalizer, meta) and ``path/weights.npz``; returns ``path``."""
    os.makedirs(path, exist_ok=True)
    normalizer = normalizer or ObsNormalizer.identity(policy.config.obs_dim)
    doc = {"format": "zoopt-policy-1", "config": policy.config.to_json(),
           "normalizer": {"mean": np.asarray(normalizer.mean, np.float32).tolist(),
                          "std": np.asarray(normalizer.std, np.float32).tolist(),
                          "clip": None if math.isinf(normalizer.clip) else float(normalizer.clip),
                          "count": float(normalizer.count)},
           "meta": meta or {}}
    np.savez(os.path.join(path, "weights.npz"), **policy.export(flat))
    with open(os.path.join(path, "policy.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
    return path


def load_policy(path: str) -> SavedPolicy:
    """Load a policy written by :func:`save_policy` (``path`` is its folder).

    A broken folder raises FileNotFoundError or ValueError naming the file and what is wrong with it.
    """
    import zipfile

    json_path = os.path.join(path, "policy.json")
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"no policy.json in {path!r}")
    try:
        with open(json_path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path}: not a JSON policy file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != "zoopt-policy-1":
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{json_path} is not a zoopt policy (format {found!r})")
    try:
        policy = Policy(PolicyConfig(**doc["config"]))
        norm = doc["normalizer"]
        normalizer = ObsNormalizer(np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32),
                                   math.inf if norm["clip"] is None else float(norm["clip"]),
                                   float(norm.get("count", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{json_path}: bad policy description ({type(exc).__name__}: {exc})") from None
    dim = policy.config.obs_dim
    if normalizer.mean.shape != (dim,) or normalizer.std.shape != (dim,):
        raise ValueError(f"{json_path}: the normalizer's mean and std must have {dim} entries")
    npz = os.path.join(path, "weights.npz")
    if not os.path.isfile(npz):
        raise FileNotFoundError(f"no weights.npz in {path!r}")
    try:
        with np.load(npz) as data:  # allow_pickle stays False: no object arrays, no code
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{npz}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    expected = policy.export(torch.zeros(policy.dim))
    for name, want in expected.items():
        if name not in arrays:
            raise ValueError(f"{npz}: missing array {name!r}")
        if arrays[name].shape != want.shape:
            raise ValueError(f"{npz}: array {name!r} has shape {arrays[name].shape}, the policy needs {want.shape}")
    return SavedPolicy(policy, policy.layers_from_arrays(arrays), normalizer, doc.get("meta", {}))
