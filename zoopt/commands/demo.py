"""``zoopt demo``: the main job (see zoopt/demo.py)."""


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a step-activation network on digits with OpenAI-ES (about a minute)")
    p.add_argument("--out", default="runs/demo", help="output folder (metrics.jsonl, learning_curve.png, model.pt)")
    p.add_argument("--generations", type=int, default=300)
    p.add_argument("--popsize", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    from zoopt.demo import run_demo

    for flag, value, low in (("--generations", args.generations, 1), ("--popsize", args.popsize, 2)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    print("Training a 64-32-10 network with floor-step activations on scikit-learn digits by OpenAI-ES.")
    s = run_demo(out=args.out, generations=args.generations, popsize=args.popsize, seed=args.seed,
                 progress=not args.no_progress)
    print(f"backprop gradient through the steps: {s['backprop_grad_norm']:.1f} (backprop cannot train this net)")
    print(f"test accuracy {100 * s['test_acc']:.1f}%  (validation {100 * s['val_acc']:.1f}%) "
          f"after {s['evaluations']} evaluations in {s['seconds']:.0f} s")
    print(f"metrics: {s['metrics']}\nlearning curve: {s['plot']}")
    return 0
