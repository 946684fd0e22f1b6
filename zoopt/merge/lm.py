"""The base LM with persistent LoRA slots, and teacher-forced answer loss.

The model is wrapped once with PEFT LoRA layers for ``slots`` adapters. A
query writes its merged factors into a slot in place (no disk round trip),
and queued queries run together in one forward, each row routed to its slot
with PEFT's ``adapter_names``.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import torch


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255) plus an end-of-sequence id 256; for
    models trained on bytes and for tests with tiny random models."""

    vocab_size = 257
    eos_token_id = 256
    pad_token_id = 256

    def encode(self, text: str) -> list:
        return list(text.encode("utf-8"))

    def decode(self, ids: list) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, tok):
        self.tok = tok
        self.eos_token_id = tok.eos_token_id
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(self, text: str) -> list:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def load_base(base_dir: str, dtype=torch.float32):
    """(model, tokenizer) from a folder: a GGUF file, or a transformers config + safetensors.
    The byte tokenizer is used when the folder has no tokenizer files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(base_dir):
        raise FileNotFoundError(f"--base {base_dir} is not a folder")
    ggufs = sorted(glob.glob(os.path.join(base_dir, "*.gguf")))
    if not ggufs and not os.path.isfile(os.path.join(base_dir, "config.json")):
        raise FileNotFoundError(f"--base {base_dir}: no config.json (a transformers model folder) and no .gguf file")
    kwargs = {"gguf_file": os.path.basename(ggufs[0])} if ggufs else {}
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **kwargs)
    has_tok = ggufs or any(os.path.exists(os.path.join(base_dir, f)) for f in ("tokenizer.json", "tokenizer.model"))
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(base_dir, **kwargs)) if has_tok else ByteTokenizer()
    model.eval()
    return model, tokenizer


@dataclass
class Example:
    ids: torch.Tensor      # prompt + answer + eos
    n_prompt: int          # positions before the answer


PROMPT_FIELD = "{prompt}"


def split_template(template: str) -> tuple:
    """``(head, tail)`` around the template's one ``{prompt}``. Templates are plain
    text, never a format string (a user's ``{prompt.__class__}`` or ``{prompt:>99999999}``
    must not reach str.format), so any other ``{...}`` is refused as a likely mistake."""
    others = [f for f in re.findall(r"\{[^{}]*\}", template) if f != PROMPT_FIELD]
    if others:
        raise ValueError(f"template: only the field {PROMPT_FIELD} is allowed, found {others[0][:40]!r}")
    if template.count(PROMPT_FIELD) != 1:
        raise ValueError(f"template must contain {PROMPT_FIELD} exactly once, "
                         f"found it {template.count(PROMPT_FIELD)} times")
    head, tail = template.split(PROMPT_FIELD)
    return head, tail


def encode_examples(tokenizer, records: list, template: str = PROMPT_FIELD, max_tokens: int = 512) -> list:
    """Records ``{"prompt", "answer"}`` -> examples; the loss covers the answer and eos only.
    The prompt is put into ``template`` by plain substitution (``split_template``)."""
    head, tail = split_template(template)
    out = []
    for i, rec in enumerate(records):
        prompt_ids = tokenizer.encode(head + rec["prompt"] + tail)
        answer_ids = tokenizer.encode(rec["answer"]) + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[-max_tokens:]
        n_prompt = max(0, len(ids) - len(answer_ids))
        if len(ids) - n_prompt < 1 or n_prompt < 1:
            raise ValueError(f"example {i}: prompt and answer must both be non-empty after truncation")
        out.append(Example(torch.tensor(ids), n_prompt))
    return out


class SlotModel:
    """A base model with ``slots`` persistent LoRA adapters named slot0..slotK-1."""

    def __init__(self, base, lora_config, slots: int = 8, rows_per_forward: int = 64):
        """``lora_config``: the pool's ``peft.LoraConfig`` (or a dict of its fields)."""
        from peft import get_peft_model

        from .pool import lora_config as as_lora_config

        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        # the base the merged adapters belong to, for their base_model_name_or_path
        self.base_name = getattr(base.config, "_name_or_path", "") or None
        config = as_lora_config(lora_config, lora_dropout=0.0, inference_mode=True)
        self.model = get_peft_model(base, config, adapter_name="slot0")
        for k in range(1, slots):
            self.model.add_adapter(f"slot{k}", config)
        self.model.eval()
        self.slots = slots
        self.rows_per_forward = rows_per_forward
        self.layers = dict(self.model.named_modules())

    def write(self, slot: int, factors: dict) -> None:
        """Copy merged factors ``{module: (A, B)}`` into slot ``slot`` in place."""
        name = f"slot{slot}"
        with torch.no_grad():
            for module, (a, b) in factors.items():
                layer = self.layers.get(module)
                if layer is None:
                    raise KeyError(f"the base model has no LoRA module {module!r}")
                layer.lora_A[name].weight.copy_(a)
                layer.lora_B[name].weight.copy_(b)

    @torch.no_grad()
    def losses(self, jobs: list) -> list:
        """``jobs``: list of (slot, examples). Returns each job's mean over examples of
        the per-example mean cross-entropy on answer tokens."""
        rows = [(j, slot, ex) for j, (slot, examples) in enumerate(jobs) for ex in examples]
        totals = torch.zeros(len(jobs), dtype=torch.float64)
        for start in range(0, len(rows), self.rows_per_forward):
            chunk = rows[start:start + self.rows_per_forward]
            width = max(len(ex.ids) for _, _, ex in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, (_, _, ex) in enumerate(chunk):
                ids[r, :len(ex.ids)] = ex.ids
                mask[r, :len(ex.ids)] = 1
            # the LM head runs only on positions from the first answer-predicting one on
            first = min(ex.n_prompt for _, _, ex in chunk) - 1
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=width - first,
                                adapter_names=[f"slot{slot}" for _, slot, _ in chunk]).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            for r, (j, _, ex) in enumerate(chunk):
                target = ex.ids[ex.n_prompt:]
                pred = logp[r, ex.n_prompt - 1 - first:len(ex.ids) - 1 - first]
                nll = -pred.gather(1, target[:, None]).mean()
                totals[j] += float(nll)
        return [float(totals[j]) / len(examples) for j, (_, examples) in enumerate(jobs)]


class DenseDelta:
    """Context manager adding dense updates ``{module: dW}`` to the base weights
    of a SlotModel (for white-box references), removed on exit."""

    def __init__(self, slot_model: SlotModel, deltas: dict):
        self.layers = [(slot_model.layers[m].base_layer.weight, d) for m, d in deltas.items()]

    def __enter__(self):
        with torch.no_grad():
            for weight, delta in self.layers:
                weight.add_(delta.to(weight.dtype))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for weight, delta in self.layers:
                weight.sub_(delta.to(weight.dtype))


@torch.no_grad()
def greedy_answers(slot_model: SlotModel, tokenizer, prompts: list, slot: int, max_new_tokens: int = 8,
                   batch: int = 16) -> list:
    """Greedy continuations of ``prompts`` through slot ``slot`` (stops at eos)."""
    model = slot_model.model
    out = []
    for start in range(0, len(prompts), batch):
        encoded = [tokenizer.encode(p) for p in prompts[start:start + batch]]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # left padding keeps every prompt's end aligned
            ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
        finished = torch.zeros(len(encoded), dtype=torch.bool)
        new = []
        for _ in range(max_new_tokens):
            position = (mask.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position,
                           adapter_names=[f"slot{slot}"] * len(encoded)).logits[:, -1]
            token = logits.argmax(-1)
            token = torch.where(finished, torch.full_like(token, tokenizer.pad_token_id), token)
            finished |= token == tokenizer.eos_token_id
            new.append(token)
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, (~finished | (token == tokenizer.eos_token_id)).long()[:, None]], 1)
            if finished.all():
                break
        for row in torch.stack(new, 1).tolist():
            row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            out.append(tokenizer.decode(row) if hasattr(tokenizer, "decode") else row)
    return out
