"""Policy search on Gymnasium 1.x: the fitness of a member is minus its mean episode return.

How a generation is evaluated:

* **Common random numbers.** Episode ``k`` of generation ``g`` resets its env
  with a seed derived from ``(seed, g, k)`` only, so every member of a
  generation, on any worker, meets the same K starting states.
* **One population forward.** Members' episodes run side by side in a
  Gymnasium vector env (``vector="sync"`` or ``"async"``) of ``members x K``
  sub-envs (in waves of at most ``num_envs``); each step computes every
  member's actions with one batched matmul per layer. EGGROLL's low-rank
  specs never materialize members: one GEMM with the center's weights plus
  each member's rank-r correction (its population-aware linear); other
  specs go through ``spec.points(members)``. A sync vector env steps only
  the sub-envs whose episode is still running; an async one steps all of
  them (finished ones autoreset) and the extra steps are ignored.
* **Observation normalization** (``obs_norm=True``). A generation uses the
  statistics frozen at its start. The observations seen while evaluating it
  are accumulated per member; when the first evaluation of a later
  generation arrives, those per-member statistics are folded into the frozen
  ones in member order. The fold therefore does not depend on how members
  were split into slices or workers. Workers send their per-member
  statistics back with ``stats(members)`` (the coordinator calls
  ``merge_stats()``), and the coordinator ships its frozen statistics to them
  inside the spec (``share_stats(spec)`` puts them in ``spec.extras``): the
  per-member statistics protocol declared on ``Problem``.
* **Budget unit.** ``env_steps`` counts the environment steps the episodes
  actually used (steps after an episode ended are not counted);
  ``stats()`` carries them per member so a coordinator can add up workers.

Options: ``gamma`` discounts the return, ``action_penalty`` subtracts
``c * |a|^2`` per step (continuous actions), ``alive_penalty`` subtracts a
constant per step (as in EvoTorch's ``decrease_rewards_by``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from zoopt.spec import member_index

from .base import Problem
from .policies import ObsNormalizer, Policy, QUANTS

VECTOR_MODES = ("sync", "async")
SPEC_STATS_KEY = "gym_obs_stats"  # spec.extras entry through which a coordinator ships its frozen statistics


# -- running observation statistics ------------------------------------------------
@dataclass
class RunningStats:
    """Count, mean and sum of squared deviations (float64); merged with Chan et al.'s formula."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "RunningStats":
        return cls(0.0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def from_sums(cls, count: float, shift: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> "RunningStats":
        """From sums of ``x - shift`` and ``(x - shift)^2`` over ``count`` samples."""
        if count <= 0:
            return cls.empty(len(shift))
        d = s1 / count
        return cls(float(count), shift + d, np.maximum(s2 - count * d * d, 0.0))

    def merge(self, other: "RunningStats") -> "RunningStats":
        """A new object holding the statistics of both sample sets."""
        if other.count == 0:
            return RunningStats(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningStats(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.count if self.count > 0 else np.ones_like(self.mean)

    def normalizer(self, clip: float, eps: float = 1e-8) -> ObsNormalizer:
        if self.count < 2:
            return ObsNormalizer(self.mean.astype(np.float32) if self.count else np.zeros(len(self.mean), np.float32),
                                 np.ones(len(self.mean), np.float32), clip, self.count)
        return ObsNormalizer(self.mean.astype(np.float32), np.sqrt(self.var + eps).astype(np.float32),
                             clip, self.count)


@dataclass
class GenerationStats:
    """What one evaluation learned: per-member observation statistics and env steps, for one generation."""

    generation: int
    members: dict = field(default_factory=dict)   # member index -> RunningStats

    @property
    def env_steps(self) -> int:
        return int(sum(s.count for s in self.members.values()))


# -- seeds ---------------------------------------------------------------------------
def episode_seeds(seed: int, generation: int, episodes: int, stream: int = 0) -> list[int]:
    """Env seeds of a generation's K episodes: a pure function of (seed, stream, generation, k)."""
    return [int(np.random.SeedSequence([int(seed), int(stream), int(generation), k]).generate_state(1)[0])
            for k in range(episodes)]


def _check_env_id(env_id) -> None:
    import gymnasium as gym

    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a string such as 'CartPole-v1', got {type(env_id).__name__}")
    try:
        gym.spec(env_id)
    except Exception as exc:  # gymnasium raises its own NameNotFound / VersionNotFound errors
        raise ValueError(f"unknown Gymnasium environment {env_id!r}: {exc}") from None


class DenseBatch:
    """Members given by their explicit layers (``Policy.layers``): one bmm per layer for all of them."""

    def __init__(self, policy: Policy, layers):
        self.policy, self.layers, self.n = policy, layers, int(layers[0][0].shape[0])

    def forward(self, start: int, stop: int):
        wave = [(w[start:stop], None if b is None else b[start:stop]) for w, b in self.layers]
        return lambda obs: self.policy.forward(wave, obs)


class LowRankBatch:
    """EGGROLL members (a ``LowRankSpec`` whose blocks are the policy's tensors), never materialized.

    Each layer runs EGGROLL's population-aware linear: one GEMM with the
    center's weights over every member's rows plus each member's rank-r
    correction ``(x B_i) A_i^T`` and its bias noise.
    """

    def __init__(self, policy: Policy, spec, members: torch.Tensor):
        from zoopt.eggroll.layers import population_linear

        self._linear = population_linear
        self.policy, self.spec, self.members, self.n = policy, spec, members, int(members.numel())
        center = spec.center.to(torch.float32)
        self.blocks = list(spec.blocks)
        self.center = [center[b.offset:b.offset + b.numel].reshape(b.shape) for b in self.blocks]

    @staticmethod
    def fits(policy: Policy, spec) -> bool:
        blocks = getattr(spec, "blocks", None)
        return (getattr(spec, "kind", None) == "lowrank" and policy.config.quant == "none" and blocks is not None
                and [tuple(b.shape) for b in blocks] == policy.param_shapes)

    def forward(self, start: int, stop: int):
        from zoopt.eggroll.population import Population

        spec = self.spec
        pop = Population(self.members[start:stop], seed=spec.seed, epoch=spec.epoch, sigma=spec.sigma,
                         rank=spec.rank)
        step = 2 if self.policy.config.bias else 1
        last = len(self.policy.shapes) - 1

        def forward(obs):
            m, k, d = obs.shape
            h = obs.reshape(m * k, d)
            for li in range(len(self.policy.shapes)):
                wb, w = self.blocks[li * step], self.center[li * step]
                bb, b = (self.blocks[li * step + 1], self.center[li * step + 1]) if step == 2 else (None, None)
                h = self._linear(pop, h, w, b, weight_id=wb.tensor_id, bias_id=bb.tensor_id if bb else 0,
                                 weight_mode=wb.mode, bias_mode=bb.mode if bb else "frozen", shared=False)
                if li < last:
                    h = torch.tanh(h)
            return h.reshape(m, k, -1)

        return forward


class Rollouts:
    """Runs episodes of a population of policies side by side in one Gymnasium vector env.

    Sub-env ``i * K + k`` plays episode ``k`` of member ``i``; all members'
    actions come from one batched forward per step. Steps a sub-env takes
    after its episode ended (vector envs autoreset) are ignored and not counted.
    """

    def __init__(self, env_id: str, policy: Policy, env_kwargs: Optional[dict] = None, vector: str = "sync",
                 num_envs: Optional[int] = None, gamma: float = 1.0, action_penalty: float = 0.0,
                 alive_penalty: float = 0.0):
        import gymnasium as gym

        if vector not in VECTOR_MODES:
            raise ValueError(f"vector must be one of {VECTOR_MODES}, got {vector!r}")
        if num_envs is not None and (isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer))
                                     or num_envs < 1):
            raise ValueError(f"num_envs must be an int >= 1 or None, got {num_envs!r}")
        self.env_id, self.env_kwargs, self.policy = env_id, dict(env_kwargs or {}), policy
        self.vector, self.num_envs = vector, num_envs
        self.gamma, self.action_penalty, self.alive_penalty = float(gamma), float(action_penalty), float(alive_penalty)
        spec = gym.spec(env_id)
        self.max_steps = self.env_kwargs.get("max_episode_steps", spec.max_episode_steps)
        self._envs: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_envs"] = {}
        return state

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs = {}

    def _vector_env(self, n: int):
        if n not in self._envs:
            import gymnasium as gym

            self._envs[n] = gym.make_vec(self.env_id, num_envs=n, vectorization_mode=self.vector, **self.env_kwargs)
        return self._envs[n]

    def _step(self, env, actions: np.ndarray, live: np.ndarray, obs):
        """One step. A sync vector env steps only the sub-envs whose episode is still running (their
        trajectories are the same as under the vector env's own step, which would also step and
        autoreset the finished ones); an async one steps all of them."""
        if self.vector != "sync":
            obs, reward, terminated, truncated, _ = env.step(actions)
            return obs, reward, terminated, truncated
        obs = np.array(obs, dtype=np.float64, copy=True)
        reward = np.zeros(len(live))
        done = ~live
        for i in np.flatnonzero(live):
            o, r, term, trunc, _ = env.envs[i].step(actions[i])
            obs[i], reward[i], done[i] = o, r, term or trunc
        return obs, reward, done, np.zeros(len(live), dtype=bool)

    def _wave_members(self, m: int, k: int) -> int:
        cap = self.num_envs or (m * k if self.vector == "sync" else (os.cpu_count() or 1))
        return max(1, min(m, cap // k))

    def run(self, batch, seeds: list[int], normalizer: ObsNormalizer, shift: Optional[np.ndarray] = None):
        """Run ``len(seeds)`` episodes for each member of ``batch`` (a :class:`DenseBatch`,
        :class:`LowRankBatch`, or a list of layers from ``Policy.layers``).

        Returns (returns ``[M, K]`` float64, per-member :class:`RunningStats` of the
        observations the policy saw; their counts are the env steps used).
        ``shift`` (e.g. the running mean) keeps the float64 sums well conditioned.
        """
        if isinstance(batch, list):
            batch = DenseBatch(self.policy, batch)
        m_total = batch.n
        per_wave = self._wave_members(m_total, len(seeds))
        shift = np.zeros(self.policy.config.obs_dim) if shift is None else np.asarray(shift, dtype=np.float64)
        returns, stats = [], []
        for start in range(0, m_total, per_wave):
            stop = min(start + per_wave, m_total)
            r, s = self._run_wave(batch.forward(start, stop), stop - start, seeds, normalizer, shift)
            returns.append(r)
            stats.extend(s)
        return np.concatenate(returns, axis=0), stats

    def _run_wave(self, forward, m: int, seeds: list[int], normalizer: ObsNormalizer, shift: np.ndarray):
        k = len(seeds)
        n = m * k
        env = self._vector_env(n)
        obs, _ = env.reset(seed=[s for _ in range(m) for s in seeds])
        obs_dim = self.policy.config.obs_dim
        continuous = self.policy.config.head == "continuous"
        live = np.ones(n, dtype=bool)
        ret, count = np.zeros(n), np.zeros(n)
        s1, s2 = np.zeros((n, obs_dim)), np.zeros((n, obs_dim))
        discount, t = 1.0, 0
        while live.any() and (self.max_steps is None or t < self.max_steps):
            raw = np.asarray(obs, dtype=np.float64).reshape(n, obs_dim)
            d = (raw - shift) * live[:, None]
            s1 += d
            s2 += d * d
            count += live
            o = normalizer(torch.from_numpy(raw).to(torch.float32)).reshape(m, k, obs_dim)
            a = self.policy.head(forward(o)).reshape(n, -1 if continuous else 1).numpy()
            if not continuous:
                a = a.reshape(n)
            obs, reward, terminated, truncated = self._step(env, a, live, obs)
            r = np.asarray(reward, dtype=np.float64) - self.alive_penalty
            if continuous and self.action_penalty:
                r = r - self.action_penalty * np.square(a.astype(np.float64)).sum(axis=1)
            ret += np.where(live, discount * r, 0.0)
            discount *= self.gamma
            live &= ~(np.asarray(terminated) | np.asarray(truncated))
            t += 1
        member_stats = [RunningStats.from_sums(float(count[i * k:(i + 1) * k].sum()), shift,
                                               s1[i * k:(i + 1) * k].sum(axis=0), s2[i * k:(i + 1) * k].sum(axis=0))
                        for i in range(m)]
        return ret.reshape(m, k), member_stats


class GymProblem(Problem):
    """Minimize ``-mean return over K episodes`` of a policy on a Gymnasium environment.

    ``policy``: ``"linear"`` or ``"mlp"`` (tanh hidden layers ``hidden``);
    ``quant``: ``"none"``, ``"int8"`` or ``"binary"`` weights. ``episodes`` is K.
    ``num_envs`` caps the sub-envs of one vector env (default: all of a
    slice's episodes for sync, ``os.cpu_count()`` for async).
    """

    keeps_member_stats = True  # observation statistics and env steps: Problem's per-member statistics protocol

    def __init__(self, env_id: str, policy: str = "linear", hidden=(64,), quant: str = "none",
                 episodes: int = 1, seed: int = 0, vector: str = "sync", num_envs: Optional[int] = None,
                 obs_norm: bool = True, obs_clip: float = 10.0, gamma: float = 1.0, action_penalty: float = 0.0,
                 alive_penalty: float = 0.0, max_episode_steps: Optional[int] = None, env_kwargs: Optional[dict] = None,
                 bias: bool = True):
        import gymnasium as gym

        _check_env_id(env_id)
        if quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
        if vector not in VECTOR_MODES:
            raise ValueError(f"vector must be one of {VECTOR_MODES}, got {vector!r}")
        if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
            raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not obs_clip > 0:
            raise ValueError(f"obs_clip must be > 0, got {obs_clip}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        for name, value in (("action_penalty", action_penalty), ("alive_penalty", alive_penalty)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        if max_episode_steps is not None:
            self.env_kwargs["max_episode_steps"] = int(max_episode_steps)
        probe = gym.make(env_id, **self.env_kwargs)
        try:
            self.policy = Policy.for_spaces(probe.observation_space, probe.action_space, policy, hidden, quant, bias)
        finally:
            probe.close()
        self.runner = Rollouts(env_id, self.policy, self.env_kwargs, vector, num_envs, gamma, action_penalty,
                               alive_penalty)
        self.dim = self.policy.dim
        self.episodes, self.seed = int(episodes), int(seed)
        self.obs_norm, self.obs_clip = bool(obs_norm), float(obs_clip)
        self.running = RunningStats.empty(self.policy.config.obs_dim)  # frozen stats of all folded generations
        self.pending = GenerationStats(-1)  # per-member stats of the generation being evaluated
        self.env_steps = 0

    def close(self) -> None:
        """Close the cached vector envs (async ones hold subprocesses)."""
        self.runner.close()

    # -- Problem contract ----------------------------------------------------------
    def initial_point(self) -> torch.Tensor:
        return self.policy.initial_point(self.seed)

    @property
    def normalizer(self) -> ObsNormalizer:
        """The normalization the current generation uses (identity when ``obs_norm`` is off)."""
        if not self.obs_norm:
            return ObsNormalizer.identity(self.policy.config.obs_dim)
        return self.running.normalizer(self.obs_clip)

    @torch.no_grad()
    def evaluate(self, spec, members) -> torch.Tensor:
        idx = member_index(members, spec.popsize)
        self.begin_generation(spec.generation)
        shared = getattr(spec, "extras", {}).get(SPEC_STATS_KEY)
        if shared is not None:  # a coordinator's frozen statistics for this generation win over this copy's
            self.running = shared
        batch = self.member_batch(spec, idx)
        seeds = episode_seeds(self.seed, spec.generation, self.episodes)
        returns, member_stats = self.runner.run(batch, seeds, self.normalizer, self.running.mean)
        for m, st in zip(idx.tolist(), member_stats):
            self.pending.members[m] = st
        self.env_steps += int(sum(st.count for st in member_stats))
        return torch.as_tensor(-returns.mean(axis=1), dtype=torch.float32)

    def member_batch(self, spec, idx: torch.Tensor):
        """Members ``idx`` ready for the population forward: EGGROLL's low-rank spec through its
        population-aware linear layers when the spec's blocks are the policy's tensors (fp32),
        any other spec through explicit points (``spec.points``)."""
        if LowRankBatch.fits(self.policy, spec):
            return LowRankBatch(self.policy, spec, idx)
        return DenseBatch(self.policy, self.policy.layers(spec.points(idx)))

    # -- statistics across generations and workers ---------------------------------
    def begin_generation(self, generation: int) -> None:
        """Fold the previous generation's per-member statistics (member order) before evaluating a later one."""
        if generation == self.pending.generation:
            return
        if generation < self.pending.generation:
            raise ValueError(f"generation went back from {self.pending.generation} to {generation}; "
                             "call load_state_dict() to rewind a problem")
        self.fold()
        self.pending = GenerationStats(int(generation))

    def fold(self) -> None:
        for m in sorted(self.pending.members):
            self.running = self.running.merge(self.pending.members[m])
        self.pending = GenerationStats(self.pending.generation)

    def share_stats(self, spec) -> None:
        """Put this (coordinating) copy's frozen statistics for ``spec``'s generation into ``spec.extras``,
        so worker copies that evaluate ``spec`` normalize exactly as this copy would."""
        self.begin_generation(spec.generation)
        spec.extras[SPEC_STATS_KEY] = self.running

    def stats(self, members=None) -> GenerationStats:
        """Per-member statistics of the generation evaluated last (for merging across workers); only
        ``members``' when given."""
        held = self.pending.members
        if members is not None:
            held = {m: held[m] for m in (int(m) for m in members) if m in held}
        return GenerationStats(self.pending.generation, dict(held))

    def merge_stats(self, others) -> None:
        """Add other workers' :meth:`stats` for the same generation; their env steps are counted here too.

        Members this copy already holds are not counted twice, so merging the
        full set back into every worker leaves all copies identical.
        """
        for other in ([others] if isinstance(others, GenerationStats) else others):
            if other.generation != self.pending.generation:
                self.begin_generation(other.generation)
            for m, st in other.members.items():
                if m not in self.pending.members:
                    self.pending.members[m] = st
                    self.env_steps += int(st.count)

    def state_dict(self) -> dict:
        return {"running": self.running, "pending": self.stats(), "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.running, self.env_steps = state["running"], int(state["env_steps"])
        self.pending = GenerationStats(state["pending"].generation, dict(state["pending"].members))

    # -- evaluation of one policy --------------------------------------------------
    @torch.no_grad()
    def evaluate_center(self, flat: torch.Tensor, episodes: int = 10, stream: int = 1, generation: int = 0):
        """Returns ``[episodes]`` of one latent vector under the current normalization.

        Uses its own seed stream (``stream``), so test episodes differ from the
        training ones; steps spent here are not added to ``env_steps``.
        """
        layers = self.policy.layers(flat.reshape(1, -1))
        returns, _ = self.runner.run(layers, episode_seeds(self.seed, generation, episodes, stream=stream),
                                     self.normalizer)
        return returns[0]


def run_episodes(saved, env_id: str, episodes: int = 10, seed: int = 0, env_kwargs: Optional[dict] = None,
                 vector: str = "sync", generation: int = 0) -> np.ndarray:
    """Undiscounted returns ``[episodes]`` of a :class:`SavedPolicy`, on the evaluation seed stream.

    With the ``seed`` of a training run this replays the episodes of that
    run's ``evaluate_center(..., generation=generation)``.
    """
    _check_env_id(env_id)
    runner = Rollouts(env_id, saved.policy, env_kwargs, vector)
    try:
        returns, _ = runner.run(saved.layers, episode_seeds(seed, generation, episodes, stream=1), saved.normalizer)
    finally:
        runner.close()
    return returns[0]
