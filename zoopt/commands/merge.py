"""``zoopt serve-merge`` (the merge service) and ``zoopt merge`` (the query-only client)."""
import json
import os


def register(sub) -> None:
    s = sub.add_parser("serve-merge", help="serve a base LM and a LoRA pool for black-box merging")
    s.add_argument("--base", required=True, help="base model folder (transformers config + weights, or a GGUF)")
    s.add_argument("--adapters", required=True, help="folder of PEFT LoRA adapter folders")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8800)
    s.add_argument("--token-env", default="ZOOPT_MERGE_TOKEN", help="environment variable holding the bearer token")
    s.add_argument("--presets", help="JSON file {preset: [adapter names]}")
    s.add_argument("--slots", type=int, default=8, help="queries batched into one forward")
    s.add_argument("--max-tokens", type=int, default=512)
    s.set_defaults(func=serve)

    m = sub.add_parser("merge", help="merge LoRA adapters behind a service by queries alone (Evo-Merging)")
    m.add_argument("--url", required=True)
    m.add_argument("--token-env", default="ZOOPT_MERGE_TOKEN", help="environment variable holding the bearer token")
    m.add_argument("--session-data", required=True, help="validation set, JSON lines with prompt and answer")
    m.add_argument("--template", default="{prompt}")
    m.add_argument("--preset", default="all")
    m.add_argument("--budget", type=int, default=1200, help="queries; a third for alpha, the rest for beta")
    m.add_argument("--popsize", type=int, default=20)
    m.add_argument("--seed", type=int, default=42)
    m.add_argument("--concurrency", type=int, default=8)
    m.add_argument("--out", required=True, help="output folder: merged adapter, result.json, resume state")
    m.set_defaults(func=merge)


def token_from(var: str) -> str:
    token = os.environ.get(var)
    if not token:
        raise SystemExit(f"set the bearer token in the environment variable {var} (see --token-env)")
    return token


def serve(args) -> int:
    import uvicorn

    from zoopt.merge.lm import SlotModel, load_base
    from zoopt.merge.pool import load_pool
    from zoopt.merge.service import create_app

    token = token_from(args.token_env)
    pool = load_pool(args.adapters)
    model, tokenizer = load_base(args.base)
    presets = json.load(open(args.presets)) if args.presets else None
    app = create_app(SlotModel(model, pool.config, slots=args.slots), pool, tokenizer, token, presets,
                     max_tokens=args.max_tokens)
    print(f"serving {pool.size} adapters on http://{args.host}:{args.port} (docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def merge(args) -> int:
    from zoopt.merge.run import run_merge

    records = [json.loads(line) for line in open(args.session_data) if line.strip()]
    result = run_merge(args.url, token_from(args.token_env), records, args.out, budget=args.budget,
                       popsize=args.popsize, seed=args.seed, template=args.template, preset=args.preset,
                       concurrency=args.concurrency)
    print(f"best loss {result['loss']:.4f} after {result['queries']} queries; merged adapter in {args.out}")
    return 0
