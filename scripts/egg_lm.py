"""Pretrain the int8 EGG language model with integer EGGROLL on bytes that ship with Python,
and compare bits/byte with a float Transformer of similar size trained by backprop (Adam)
on the same bytes. No downloads: the corpus is the standard library's own .py files.

CPU default: D=64, L=2 (~132k int8 parameters), N=256, 300 generations (~5 min on one core). ``--full``: the paper's
D=256, L=6 EGG with a large population (GPU).

Writes runs/egg_lm/results.json and results.png.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from zoopt import atomic  # noqa: E402
from zoopt.eggroll.integer import EggConfig, EggLM, IntegerEGGROLL, alpha_at, bits_per_byte, param_count  # noqa: E402


def stdlib_bytes(limit: int, val_fraction: float = 0.1):
    """The stdlib's .py files as bytes, each document preceded by a 0 byte; split by file."""
    root = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "*", "*.py")))
    files = [f for f in files if "site-packages" not in f and "test" not in os.path.basename(os.path.dirname(f))]
    docs, total = [], 0
    for path in files:
        with open(path, "rb") as fh:
            data = b"\0" + fh.read()
        docs.append(data)
        total += len(data)
        if total >= limit:
            break
    n_val = max(1, int(len(docs) * val_fraction))
    train = torch.frombuffer(bytearray(b"".join(docs[:-n_val])), dtype=torch.uint8).to(torch.int64)
    val = torch.frombuffer(bytearray(b"".join(docs[-n_val:])), dtype=torch.uint8).to(torch.int64)
    return train, val, len(docs)


def ngram_bits(train: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None = None) -> float:
    """Bits/byte on ``targets`` of add-one-smoothed byte counts from ``train``: unigram, or bigram
    (conditioned on ``inputs``, the previous byte). The floor a model must beat to have learned anything."""
    if inputs is None:
        counts = torch.bincount(train, minlength=256).double() + 1
        return float(-(counts / counts.sum()).log2()[targets].mean())
    counts = torch.bincount(train[:-1] * 256 + train[1:], minlength=256 * 256).double().view(256, 256) + 1
    probs = counts / counts.sum(1, keepdim=True)
    return float(-probs[inputs, targets].log2().mean())


def windows(data: torch.Tensor, count: int, length: int, generator: torch.Generator):
    """``count`` random windows of ``length + 1`` bytes -> (inputs, targets) ``[count, length]``."""
    starts = torch.randint(0, data.numel() - length - 1, (count,), generator=generator)
    rows = data[starts[:, None] + torch.arange(length + 1)]
    return rows[:, :-1], rows[:, 1:]


class TinyTransformer(nn.Module):
    """A pre-LN decoder: learned positions, causal attention, GELU MLP, untied head."""

    def __init__(self, dim: int, layers: int, heads: int, context: int, vocab: int = 256):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x):
        T = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.blocks(self.emb(x) + self.pos[:T], mask=mask, is_causal=True)
        return self.head(self.norm(h))


def update_signal(args, train) -> list:
    """How much of one integer EGGROLL update is signal, per population size: two independent
    populations (seeds s, s+1) score the same center on the same windows; only the signal in their
    accumulators ``Z`` is shared, so corr(Z_1, Z_2) over all elements estimates the signal's share of
    one update's variance. ``agree``: for the top fraction alpha of |Z_1| (what a step at alpha_t moves),
    how often sign(Z_2) agrees (0.5: pure noise). The float EGGROLL figures (:func:`float_signal`) say
    whether the integer path is any noisier than float ES at the same population."""
    cfg = EggConfig(dim=args.dim, layers=args.layers, sigma_shift=args.sigma_shift, alpha=args.alpha)
    model = EggLM(cfg, seed=args.seed)
    windows_per_step = args.popsize // args.group_size
    x, y = windows(train, windows_per_step, args.tokens, torch.Generator().manual_seed(args.seed))
    rows = []
    for n in args.diagnose:
        zs = []
        for seed in (args.seed, args.seed + 1):
            es = IntegerEGGROLL(model, popsize=n, seed=seed, group_size=n // windows_per_step)
            zs.append(torch.cat([z.reshape(-1).double() for z in es.accumulate(es.fitness(x, y)).values()]))
        corr = float(torch.corrcoef(torch.stack(zs))[0, 1])
        row = {"popsize": n, "corr": corr}
        for t in (1, 300, 1000):
            a = alpha_at(args.alpha, t)
            top = zs[0].abs() >= zs[0].abs().quantile(1 - a) if a < 1 else torch.ones_like(zs[0], dtype=torch.bool)
            row[f"agree_t{t}"] = float((torch.sign(zs[0][top]) == torch.sign(zs[1][top])).double().mean())
            row[f"alpha_t{t}"] = a
        row.update(float_signal(args, n, x, y))
        print(f"[signal] N={n}: corr(Z1, Z2) {corr:.4f}; sign agreement of the moved entries at t=1/300/1000: "
              f"{row['agree_t1']:.3f} / {row['agree_t300']:.3f} / {row['agree_t1000']:.3f}; float EGGROLL on the "
              f"float Transformer: corr(G1, G2) {row['float_corr']:.4f}, cos(G, backprop) {row['float_cos']:.3f}",
              flush=True)
        rows.append(row)
    return rows


def float_signal(args, n, x, y) -> dict:
    """The same two-population measure for float EGGROLL (z-scored fitness, rank 1, sigma 0.05) on the
    float Transformer at its init, plus the cosine of each estimate with the backprop gradient."""
    from zoopt.eggroll import EGGROLL

    def loss(out, t):
        return nn.functional.cross_entropy(out.reshape(-1, 256), t.reshape(-1))

    grads, cos = [], []
    for seed in (args.seed, args.seed + 1):
        torch.manual_seed(args.seed)
        model = TinyTransformer(args.dim, args.layers, args.heads, args.tokens)
        opt = EGGROLL(model, popsize=n, rank=1, sigma=0.05, seed=seed, exclude=["pos"])
        est = opt.gradients(opt.evaluate((x, y), loss))
        opt.detach()
        loss(model(x), y).backward()
        grads.append(torch.cat([g.reshape(-1) for g in est.values()]))
        true = torch.cat([model.get_parameter(k).grad.reshape(-1) for k in est])
        cos.append(float(nn.functional.cosine_similarity(grads[-1], true, 0)))
    return {"float_corr": float(torch.corrcoef(torch.stack(grads))[0, 1]), "float_cos": sum(cos) / 2}


def float_bits_per_byte(model, inputs, targets, chunk=64):
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, inputs.shape[0], chunk):
            logits = model(inputs[s:s + chunk])
            total += float(nn.functional.cross_entropy(logits.reshape(-1, 256), targets[s:s + chunk].reshape(-1),
                                                       reduction="sum"))
            count += targets[s:s + chunk].numel()
    return total / count / math.log(2)


def train_egg(args, train, val_x, val_y):
    cfg = EggConfig(dim=args.dim, layers=args.layers, sigma_shift=args.sigma_shift, alpha=args.alpha)
    model = EggLM(cfg, seed=args.seed)
    es = IntegerEGGROLL(model, popsize=args.popsize, seed=args.seed, group_size=args.group_size)
    gen = torch.Generator().manual_seed(args.seed)
    curve = [(0, bits_per_byte(model, val_x, val_y))]
    print(f"[egg] {param_count(cfg)} int8 params, N={args.popsize}, group {args.group_size}: "
          f"start {curve[0][1]:.3f} bits/byte", flush=True)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = windows(train, args.popsize // args.group_size, args.tokens, gen)
        stats = es.tell(es.fitness(x, y))
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, bits_per_byte(model, val_x, val_y)))
            print(f"[egg] step {step}: val {curve[-1][1]:.3f} bits/byte, moved {stats['moved_fraction']:.4f}, "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return {"params": param_count(cfg), "curve": curve, "final_bits_per_byte": curve[-1][1],
            "seconds": time.perf_counter() - t0, "member_tokens": args.steps * args.popsize * args.tokens}


def train_float(args, train, val_x, val_y):
    torch.manual_seed(args.seed)
    model = TinyTransformer(args.dim, args.layers, args.heads, args.tokens)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.float_lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    curve = [(0, float_bits_per_byte(model, val_x, val_y))]
    t0 = time.perf_counter()
    for step in range(1, args.float_steps + 1):
        x, y = windows(train, args.float_batch, args.tokens, gen)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.float_steps // 10) == 0:
            curve.append((step, float_bits_per_byte(model, val_x, val_y)))
    print(f"[float] {n_params} float params, {args.float_steps} Adam steps: val {curve[-1][1]:.3f} bits/byte "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return {"params": n_params, "curve": curve, "final_bits_per_byte": curve[-1][1],
            "seconds": time.perf_counter() - t0, "tokens": args.float_steps * args.float_batch * args.tokens}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--popsize", type=int)
    p.add_argument("--alpha", type=float, default=4.0, help="threshold schedule: alpha_t = 1/((2^alpha-1)t/1000+1)")
    p.add_argument("--sigma-shift", dest="sigma_shift", type=int, default=4, help="sigma = 2^-sigma_shift")
    p.add_argument("--group-size", dest="group_size", type=int, help="members sharing one window")
    p.add_argument("--skip-float", action="store_true", help="train only the EGG model")
    p.add_argument("--diagnose", type=int, nargs="+", metavar="N",
                   help="only measure the signal share of one update at these population sizes (see update_signal)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/egg_lm")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.full:
        defaults = dict(dim=256, layers=6, heads=8, tokens=100, popsize=4096, group_size=256, steps=2000,
                        bytes=20_000_000, float_steps=5000, float_batch=64, val_windows=256)
    else:
        defaults = dict(dim=64, layers=2, heads=4, tokens=32, popsize=256, group_size=16, steps=300,
                        bytes=3_000_000, float_steps=400, float_batch=32, val_windows=64)
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.eval_every, args.float_lr = max(1, args.steps // 10), 3e-3
    train, val, n_docs = stdlib_bytes(args.bytes)
    vx, vy = windows(val, args.val_windows, args.tokens, torch.Generator().manual_seed(1234))
    print(f"corpus: {n_docs} stdlib files, {train.numel()} train / {val.numel()} val bytes", flush=True)
    results = {"config": {k: getattr(args, k) for k in defaults}, "corpus_files": n_docs,
               "train_bytes": train.numel(), "val_bytes": val.numel(),
               "unigram_bits_per_byte": ngram_bits(train, vy), "bigram_bits_per_byte": ngram_bits(train, vy, vx)}
    print(f"references on the val windows: unigram {results['unigram_bits_per_byte']:.3f}, "
          f"bigram {results['bigram_bits_per_byte']:.3f} bits/byte", flush=True)
    results["config"].update(alpha=args.alpha, sigma_shift=args.sigma_shift)
    if args.diagnose:
        results["update_signal"] = update_signal(args, train)
        os.makedirs(args.out, exist_ok=True)
        atomic.write_json(os.path.join(args.out, "signal.json"), results)
        return results
    if not args.skip_float:
        results["float_transformer"] = train_float(args, train, vx, vy)
    results["egg_int8"] = train_egg(args, train, vx, vy)
    if not args.skip_float:
        results["ratio_bits_egg_over_float"] = (results["egg_int8"]["final_bits_per_byte"]
                                                / results["float_transformer"]["final_bits_per_byte"])
    os.makedirs(args.out, exist_ok=True)
    atomic.write_json(os.path.join(args.out, "results.json"), results)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("egg_int8", "int8 EGG + integer EGGROLL"), ("float_transformer", "float Transformer + Adam")):
            if key not in results:
                continue
            c = results[key]["curve"]
            frac = [s / max(1, c[-1][0]) for s, _ in c]
            ax.plot(frac, [b for _, b in c], marker="o", label=label)
        ax.set(xlabel="fraction of training", ylabel="val bits/byte", title="stdlib bytes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "results.png"), dpi=120)
    except ImportError:
        pass
    base = results.get("float_transformer", {}).get("final_bits_per_byte", float("nan"))
    print(f"EGG {results['egg_int8']['final_bits_per_byte']:.3f} vs float {base:.3f} bits/byte; "
          f"wrote {args.out}/results.json")


if __name__ == "__main__":
    main()
