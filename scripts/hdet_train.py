"""Train a byte-level LM on Python's stdlib with HDET, data-parallel over torchrun ranks.

    torchrun --nproc_per_node 2 scripts/hdet_train.py              # CPU, gloo
    torchrun --nproc_per_node 8 scripts/hdet_train.py --full       # GPUs, NCCL
    python scripts/hdet_train.py --replicas 4                      # one process, simulated replicas

Every rank logs its LRs, its training loss and the base LR per step to ``OUT/rank{r}.jsonl``;
rank 0 adds the validation loss after each sync and draws ``OUT/hdet_train.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hdet_charlm as lm  # noqa: E402

from zoopt import HDETOneCycleLR, HDETSimulation  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-lr", type=float, default=3e-3)
    ap.add_argument("--spread", type=float, default=0.3)
    ap.add_argument("--sync-every", type=int, default=25)
    ap.add_argument("--auto-lr-start", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--meta-lr", type=float, default=0.5)
    ap.add_argument("--init-noise", type=float, default=0.0,
                    help="ν of the warm noisy initialisation (paper's HDET full: 0.01; 0 = off)")
    ap.add_argument("--corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--replicas", type=int, default=2, help="simulated replicas when not under torchrun")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/hdet_train")
    ap.add_argument("--full", action="store_true", help="larger model and longer run (GPU size)")
    args = ap.parse_args(argv)
    if args.full:
        args.steps, args.batch, args.context, args.d_model, args.layers = 20_000, 64, 256, 384, 6
        args.sync_every, args.corpus_bytes = 500, 50_000_000
    return args


def main(argv=None):
    args = parse(argv)
    warnings.filterwarnings("ignore", message=".*lr_scheduler.*")
    torch.set_num_threads(args.threads)
    distributed = "WORLD_SIZE" in os.environ
    device = torch.device("cpu")
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    else:
        rank, world = 0, args.replicas
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, val = lm.split(lm.stdlib_corpus(args.corpus_bytes))
    torch.manual_seed(args.seed)                     # same initial weights on every rank
    model = lm.CharTransformer(args.d_model, args.layers, 4, args.context).to(device)
    opt = torch.optim.Adam(lm.param_groups(model), lr=args.max_lr)
    hdet = dict(max_lr=args.max_lr, total_steps=args.steps, spread=args.spread, sync_every=args.sync_every,
                auto_lr_start=args.auto_lr_start, temperature=args.temperature, meta_lr=args.meta_lr,
                init_noise=args.init_noise, init_seed=args.seed)       # default floor: 0.22 of the start

    def batch(step, r):
        x, y = lm.sample_batch(train, args.batch, args.context, args.seed, step, r)
        return x.to(device), y.to(device)

    log = open(out / f"rank{rank}.jsonl", "w")
    started = time.perf_counter()
    if distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        sched = HDETOneCycleLR(opt, **hdet)
        for step in range(args.steps):
            opt.zero_grad(set_to_none=True)
            loss = lm.lm_loss(ddp, batch(step, rank))
            loss.backward()                         # DDP averages the gradients
            lrs, base = sched.get_last_lr(), sched.ensemble.base_lr().tolist()
            opt.step()
            sched.step(loss)
            rec = {"step": step, "rank": rank, "lr": lrs, "loss": loss.item(), "base": base}
            if sched.last_epoch % args.sync_every == 0 and rank == 0:
                rec["val"] = lm.evaluate(model, val, args.context)
            log.write(json.dumps(rec) + "\n")
        history = sched.history
        dist.barrier()
    else:
        sim = HDETSimulation(model, opt, world, **hdet)
        for step in range(args.steps):
            lrs = sim.lrs().tolist()
            base = sim.ensemble.base_lr().tolist()
            losses = sim.step([batch(step, r) for r in range(world)], lm.lm_loss)
            val_loss = lm.evaluate(model, val, args.context) if sim.ensemble.t % args.sync_every == 0 else None
            for r in range(world):
                rec = {"step": step, "rank": r, "lr": lrs[r], "loss": float(losses[r]), "base": base}
                if val_loss is not None and r == 0:
                    rec["val"] = val_loss
                log.write(json.dumps(rec) + "\n")
        history = sim.history
    log.close()
    if rank == 0:
        final = lm.evaluate(model, val, args.context, batches=32)
        summary = {"mode": "torchrun" if distributed else "simulation", "replicas": world, "final_val": final,
                   "seconds": time.perf_counter() - started, "controller_syncs": len(history), "args": vars(args)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot(out, world)
        print(json.dumps({k: summary[k] for k in ("mode", "replicas", "final_val", "seconds", "controller_syncs")}))
    if distributed:
        dist.destroy_process_group()


def plot(out: pathlib.Path, world: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for f in sorted(out.glob("rank*.jsonl")) for line in f.read_text().splitlines()]
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in range(world):
        mine = [x for x in rows if x["rank"] == r]
        steps = [x["step"] for x in mine]
        ax_lr.plot(steps, [x["lr"][0] for x in mine], lw=1, label=f"rank {r}")
        loss = torch.tensor([x["loss"] for x in mine])
        k = min(20, len(loss))
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1).flatten().tolist() if k else []
        ax_loss.plot(steps[k - 1:], smooth, lw=1, label=f"rank {r} train (avg {k})")
    base = [x for x in rows if x["rank"] == 0]
    ax_lr.plot([x["step"] for x in base], [x["base"][0] for x in base], "k--", lw=1.5, label="base LR η̄")
    vals = [x for x in rows if "val" in x]
    ax_loss.plot([x["step"] for x in vals], [x["val"] for x in vals], "ko-", ms=3, label="val (after sync)")
    ax_lr.set(xlabel="step", ylabel="LR (group 0)", title="per-rank learning rates")
    ax_loss.set(xlabel="step", ylabel="loss (nats/byte)", title="losses")
    ax_lr.legend(fontsize=7)
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "hdet_train.png", dpi=110)


if __name__ == "__main__":
    main()
