"""``zoopt serve-merge`` (the merge service) and ``zoopt merge`` (the query-only client)."""
import json
import os

from zoopt.commands import options


def register(sub) -> None:
    s = options.add_command(sub, "serve-merge", help="serve a base LM and a LoRA pool for black-box merging")
    s.add_argument("--base", required=True, help="base model folder (transformers config + weights, or a GGUF)")
    s.add_argument("--adapters", required=True, help="folder of PEFT LoRA adapter folders")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8800)
    s.add_argument("--token-env", default="ZOOPT_MERGE_TOKEN", help="environment variable holding the bearer token")
    s.add_argument("--presets", help="JSON file {preset: [adapter names]}")
    s.add_argument("--slots", type=int, default=8, help="queries batched into one forward")
    s.add_argument("--max-tokens", type=int, default=512)
    s.set_defaults(func=serve)

    m = options.add_command(sub, "merge", help="merge LoRA adapters behind a service by queries alone (Evo-Merging)")
    m.add_argument("--url", required=True)
    m.add_argument("--token-env", default="ZOOPT_MERGE_TOKEN", help="environment variable holding the bearer token")
    m.add_argument("--session-data", required=True, help="validation set, JSON lines with prompt and answer")
    m.add_argument("--template", default="{prompt}")
    m.add_argument("--preset", default="all")
    options.add_run_length(m, "--budget", 1200, "queries",
                           help="API queries, a cap (whole generations): a third for alpha, the rest for beta")
    m.add_argument("--popsize", type=int, default=20)
    options.add_seed(m, default=42)
    m.add_argument("--concurrency", type=int, default=8)
    m.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: merged adapter, result.json, resume state (a run there is resumed)")
    options.add_quiet(m)
    m.set_defaults(func=merge)


def token_from(var: str) -> str:
    token = os.environ.get(var)
    if not token:
        raise ValueError(f"set the bearer token in the environment variable {var} (see --token-env)")
    return token


def existing(path: str, option: str, folder: bool) -> str:
    """``path`` if it is an existing folder (or file); else an error naming the option."""
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        kind = "folder" if folder else "file"
        raise FileNotFoundError(f"{option} {path}: no such {kind}")
    return path


def at_least(value: int, low: int, option: str) -> int:
    if value < low:
        raise ValueError(f"{option} must be >= {low}, got {value}")
    return value


def read_presets(path: str) -> dict:
    """{preset: [adapter names]} from a JSON file; errors name the file (and line)."""
    try:
        with open(existing(path, "--presets", folder=False), encoding="utf-8") as fh:
            presets = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--presets {path}:{exc.lineno}: not JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--presets {path}: not UTF-8 text") from None
    if not (isinstance(presets, dict) and all(isinstance(k, str) and isinstance(v, list) and v
                                              and all(isinstance(n, str) for n in v) for k, v in presets.items())):
        raise ValueError(f"--presets {path}: must be a JSON object {{preset: [adapter names]}}")
    return presets


def read_records(path: str) -> list:
    """JSON lines ``{"prompt": str, "answer": str}``; errors name the file and line."""
    records = []
    try:
        with open(existing(path, "--session-data", folder=False), encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"--session-data {path}:{lineno}: not JSON ({exc.msg})") from None
                if not (isinstance(rec, dict) and all(isinstance(rec.get(k), str) and rec[k] for k in ("prompt", "answer"))):
                    raise ValueError(f"--session-data {path}:{lineno}: needs non-empty string fields prompt and answer")
                records.append({"prompt": rec["prompt"], "answer": rec["answer"]})
    except UnicodeDecodeError:
        raise ValueError(f"--session-data {path}: not UTF-8 text") from None
    if not records:
        raise ValueError(f"--session-data {path}: no records")
    return records


def serve(args) -> int:
    import uvicorn

    from zoopt.merge.lm import SlotModel, load_base
    from zoopt.merge.pool import load_pool
    from zoopt.merge.service import create_app

    token = token_from(args.token_env)
    at_least(args.slots, 1, "--slots")
    at_least(args.max_tokens, 2, "--max-tokens")
    if not 0 <= args.port <= 65_535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    presets = read_presets(args.presets) if args.presets else None
    pool = load_pool(existing(args.adapters, "--adapters", folder=True))
    unknown = sorted({n for names in (presets or {}).values() for n in names} - set(pool.names))
    if unknown:
        raise ValueError(f"--presets {args.presets}: adapters not in {args.adapters}: {unknown}")
    model, tokenizer = load_base(existing(args.base, "--base", folder=True))
    app = create_app(SlotModel(model, pool.config, slots=args.slots), pool, tokenizer, token, presets,
                     max_tokens=args.max_tokens)
    print(f"serving {pool.size} adapters on http://{args.host}:{args.port} (docs at /docs, with the token)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def merge(args) -> int:
    from zoopt.merge.client import MergeServiceError
    from zoopt.merge.lm import split_template
    from zoopt.merge.run import run_merge

    token = token_from(args.token_env)
    split_template(args.template)
    at_least(args.popsize, 2, "--popsize")
    at_least(args.budget, 2 * args.popsize, "--budget (two generations, one per stage)")
    at_least(args.concurrency, 1, "--concurrency")
    if not args.url.startswith(("http://", "https://")):
        raise ValueError(f"--url must start with http:// or https://, got {args.url!r}")
    records = read_records(args.session_data)
    try:
        result = run_merge(args.url, token, records, args.out, budget=args.budget, popsize=args.popsize,
                           seed=args.seed, template=args.template, preset=args.preset,
                           concurrency=args.concurrency, progress=not args.quiet)
    except MergeServiceError as exc:  # the service refused (4xx) or could not be reached: one line
        raise ValueError(f"merge service at {args.url}: {exc}") from None
    print(f"best loss {result['loss']:.4f} after {result['queries']} queries; merged adapter in {args.out}")
    return 0
