"""A small byte-level language model on Python's own standard library (ships with every Python).

Shared by ``hdet_train.py`` and ``bench_hdet.py``: the corpus, a deterministic batch sampler keyed
by (seed, step, replica), and a tiny causal transformer.
"""
from __future__ import annotations

import math
import pathlib
import sysconfig

import torch
import torch.nn as nn

VOCAB = 256


def stdlib_corpus(max_bytes: int = 2_000_000) -> torch.Tensor:
    """The stdlib's top-level ``*.py`` files in name order, concatenated as bytes (uint8 tensor)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    blob = b"".join(chunks)[:max_bytes]
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()


def split(corpus: torch.Tensor, val_fraction: float = 0.1):
    n_val = int(len(corpus) * val_fraction)
    return corpus[:-n_val], corpus[-n_val:]


def sample_batch(data: torch.Tensor, batch: int, context: int, seed: int, step: int, replica: int):
    """Inputs/targets ``[batch, context]`` at offsets drawn from (seed, step, replica) alone."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + replica) % (2 ** 62))
    starts = torch.randint(0, len(data) - context - 1, (batch,), generator=g)
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


class CharTransformer(nn.Module):
    """Pre-norm causal transformer over bytes."""

    def __init__(self, d_model=64, n_layers=2, n_heads=4, context=64, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def lm_loss(model, batch):
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


@torch.no_grad()
def evaluate(model, data, context, batches=8, batch=32, seed=12345):
    """Mean loss (nats/byte) on fixed held-out windows; inf if non-finite."""
    model.eval()
    total = 0.0
    for i in range(batches):
        total += float(lm_loss(model, sample_batch(data, batch, context, seed, i, 0)))
    model.train()
    return total / batches if math.isfinite(total) else float("inf")


def unigram_entropy(data: torch.Tensor) -> float:
    """Loss of the best context-free predictor: a model above it has learned nothing."""
    p = torch.bincount(data.long(), minlength=VOCAB).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def param_groups(model, weight_decay=0.0):
    """Two groups, as in the paper's per-group exploration: matrices and the rest (no decay)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n and "embed" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
