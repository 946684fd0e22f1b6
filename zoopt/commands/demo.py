"""``zoopt demo``: the main job (see zoopt/demo.py)."""
from zoopt.commands import options

# measured with the defaults (300 generations, one torch thread, 96.1% test accuracy) on the shared
# 2-core machine: 21 s wall (14 CPU-s, 11 s of training) at load average 5, 55 s at load average 11
DURATION = "about 20 s on 2 cores; up to a minute on a busy machine"


def register(sub) -> None:
    p = options.add_command(sub, "demo", help=f"train a step-activation network on digits with OpenAI-ES "
                                              f"({DURATION})")
    options.add_run_folder(p, "runs/demo", contents="metrics.jsonl, learning_curve.png, model.pt, run.json")
    options.add_run_length(p, "--generations", 300, "generations", help="OpenAI-ES generations")
    p.add_argument("--popsize", type=int, default=128, help="population size")
    options.add_seed(p)
    options.add_threads(p)
    options.add_workers(p)
    options.add_quiet(p)
    options.add_loggers(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from zoopt.demo import run_demo

    options.at_least(args, generations=1, popsize=2)
    options.apply_threads(args)
    print("Training a 64-32-10 network with floor-step activations on scikit-learn digits by OpenAI-ES.")
    s = run_demo(out=args.out or "runs/demo", generations=args.generations, popsize=args.popsize, seed=args.seed,
                 progress=not args.quiet, force=args.force, loggers=args.logger, workers=args.workers,
                 backend=args.backend, address=args.address)
    print(f"backprop gradient through the steps: {s['backprop_grad_norm']:.1f} (backprop cannot train this net)")
    print(f"test accuracy {100 * s['test_acc']:.1f}%  (validation {100 * s['val_acc']:.1f}%) "
          f"after {s['evaluations']} evaluations in {s['seconds']:.0f} s")
    print(f"metrics: {s['metrics']}\nlearning curve: {s['plot']}")
    return 0
