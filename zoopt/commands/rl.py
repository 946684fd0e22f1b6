"""``zoopt rl ENV`` searches a policy for a Gymnasium env (the loop is :func:`zoopt.rl.train_rl`);
``zoopt rl-eval PATH`` replays a saved one. Parsing only.
"""
from __future__ import annotations

import os

from zoopt.commands import options


# -- command line ----------------------------------------------------------------------
def _hidden(text: str):
    try:
        sizes = tuple(int(h) for h in text.split(","))
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated ints such as 64,64, got {text!r}") from None
    return sizes


def register(sub) -> None:
    p = options.add_command(sub, "rl", help="search a policy for a Gymnasium environment")
    p.add_argument("env", help="Gymnasium environment id, e.g. CartPole-v1")
    options.add_method(p, "openai_es")
    p.add_argument("--popsize", type=int, default=50, help="population size")
    options.add_run_length(p, "--budget", 300_000, "env steps",
                           help="environment steps of the training episodes, a cap: the run stops within one "
                                "generation below it (the center's test episodes are not charged)")
    options.add_workers(p)
    p.add_argument("--policy", default="linear", choices=["linear", "mlp"])
    p.add_argument("--hidden", default="64", help="MLP hidden sizes, comma-separated")
    p.add_argument("--quant", default="none", choices=["none", "fp32", "int8", "binary"],
                   help="weight format (fp32 = none)")
    p.add_argument("--episodes", type=int, default=1, help="episodes per member (K)")
    p.add_argument("--vector", default="sync", choices=["sync", "async"])
    p.add_argument("--sigma", type=float, default=None, help="noise scale (default: the method's RL default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's RL default)")
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--action-penalty", type=float, default=0.0)
    p.add_argument("--alive-penalty", type=float, default=0.0)
    p.add_argument("--no-obs-norm", action="store_true")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--target", type=float, default=None, help="stop once the center's test return reaches this")
    options.add_seed(p)
    options.add_threads(p)
    options.add_run_folder(p, "runs/rl/ENV-METHOD-seedS")
    options.add_quiet(p)
    options.add_loggers(p)
    p.set_defaults(func=main)

    e = options.add_command(sub, "rl-eval", help="replay a saved policy: mean +- std return, optional GIF")
    e.add_argument("path", help="a policy folder written by zoopt rl (e.g. runs/rl/.../best)")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the training seed)")
    e.add_argument("--env", default=None, help="override the environment id stored with the policy")
    e.add_argument("--gif", default=None, help="write a GIF of one episode here")
    e.set_defaults(func=main_eval)


def main(args) -> int:
    from zoopt.loggers import make_loggers
    from zoopt.rl import default_rl_dir, train_rl

    options.apply_threads(args)
    quant = "none" if args.quant == "fp32" else args.quant
    out = args.out or default_rl_dir(args.env, args.method, args.seed)
    loggers = make_loggers(args.logger, out)
    try:
        s = train_rl(args.env, args.method, budget=args.budget, popsize=args.popsize, seed=args.seed,
                     policy=args.policy, hidden=_hidden(args.hidden), quant=quant, episodes=args.episodes,
                     workers=args.workers, backend=args.backend, address=args.address, vector=args.vector,
                     obs_norm=not args.no_obs_norm,
                     gamma=args.gamma, action_penalty=args.action_penalty, alive_penalty=args.alive_penalty,
                     eval_every=args.eval_every, eval_episodes=args.eval_episodes, target=args.target, out=out,
                     force=args.force, progress=not args.quiet, loggers=loggers,
                     strategy_options={"sigma": args.sigma, "lr": args.lr})
    finally:
        loggers.close()
    if s["stop"] == "interrupted":
        print(f"zoopt rl: interrupted after generation {s['generations']}; best/, final/ and the metrics are saved "
              f"in {out}")
        return 130
    last = [r for r in s["history"] if "test_mean" in r][-1]
    over = ("" if s["env_steps"] <= s["budget"] else
            f" (the first generation alone took {s['first_generation_steps']} env steps, over the budget)")
    print(f"{args.env} {args.method} ({args.policy}, {args.quant}): final test return "
          f"{last['test_mean']:.1f} +- {last['test_std']:.1f}, best {s['best']['return']:.1f} "
          f"after {s['env_steps']} of {s['budget']} env steps{over}, {s['generations']} generations, "
          f"{s['seconds']:.1f} s ({s['env_steps'] / max(s['seconds'], 1e-9):.0f} steps/s)")
    print(f"saved: {os.path.join(out, 'best')}  {os.path.join(out, 'final')}  {os.path.join(out, 'metrics.jsonl')}  "
          f"{os.path.join(out, 'learning_curve.png')}")
    return 0


def main_eval(args) -> int:
    from zoopt.problems.gym import run_episodes
    from zoopt.problems.policies import load_policy

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    saved = load_policy(args.path)
    env_id = args.env or saved.meta.get("env_id")
    if not env_id:
        raise ValueError("the policy does not record its environment; pass --env")
    seed = saved.meta.get("seed", 0) if args.seed is None else args.seed
    returns = run_episodes(saved, env_id, episodes=args.episodes, seed=seed, env_kwargs=saved.meta.get("env_kwargs"))
    print(f"{env_id}: return {returns.mean():.2f} +- {returns.std():.2f} over {args.episodes} episodes "
          f"(min {returns.min():.1f}, max {returns.max():.1f})")
    if args.gif:
        from zoopt.rl import write_gif

        n = write_gif(saved, env_id, args.gif, seed=seed, env_kwargs=saved.meta.get("env_kwargs"))
        print(f"GIF of one episode ({n} frames): {args.gif}")
    return 0
