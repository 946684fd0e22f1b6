"""Synthetic text-to-text tasks for a real adapter pool: skills, distractors,
and held-out targets that combine skills. Each task maps a seeded RNG to a
``{"prompt", "answer"}`` record; answers are short so exact match is meaningful."""
from __future__ import annotations

import random
import string

LETTERS = string.ascii_lowercase
WORDS = ("cat", "dog", "sun", "tree", "blue", "red", "fish", "bird", "moon", "star", "rock", "leaf")


def _word(rng, lo=3, hi=6):
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _kv(rng, n=3):
    keys = rng.sample("abcdefgh", n)
    return keys, [rng.randint(0, 9) for _ in keys]


def add(rng):
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return {"prompt": f"add {a} {b} =", "answer": f" {a + b}"}


def reverse(rng):
    w = _word(rng)
    return {"prompt": f"reverse {w} =", "answer": f" {w[::-1]}"}


def sort_letters(rng):
    w = _word(rng, 4, 6)
    return {"prompt": f"sort {' '.join(w)} =", "answer": f" {' '.join(sorted(w))}"}


def upper(rng):
    w = _word(rng)
    return {"prompt": f"upper {w} =", "answer": f" {w.upper()}"}


def count(rng):
    c = rng.choice("ab")
    w = "".join(rng.choice("abc") for _ in range(rng.randint(4, 9)))
    return {"prompt": f"count {c} in {w} =", "answer": f" {w.count(c)}"}


def lookup(rng):
    keys, vals = _kv(rng)
    k = rng.choice(keys)
    pairs = ";".join(f"{a}={v}" for a, v in zip(keys, vals))
    return {"prompt": f"get {k} from {pairs} =", "answer": f" {vals[keys.index(k)]}"}


def last_word(rng):
    ws = rng.sample(WORDS, rng.randint(3, 5))
    return {"prompt": f"last of {' '.join(ws)} =", "answer": f" {ws[-1]}"}


def first_letters(rng):
    ws = rng.sample(WORDS, rng.randint(3, 5))
    return {"prompt": f"initials of {' '.join(ws)} =", "answer": f" {''.join(w[0] for w in ws)}"}


# distractors: consistent but irrelevant mappings the targets never need
def noise_words(rng):
    return {"prompt": f"chant {_word(rng)} =", "answer": f" {_word(rng)}"}


def constant(rng):
    return {"prompt": f"say {rng.choice(WORDS)} =", "answer": " zzz"}


# held-out targets combining skills
def reverse_upper(rng):
    w = _word(rng)
    return {"prompt": f"reverse upper {w} =", "answer": f" {w[::-1].upper()}"}


def lookup_add(rng):
    keys, vals = _kv(rng)
    a, b = rng.sample(keys, 2)
    pairs = ";".join(f"{k}={v}" for k, v in zip(keys, vals))
    return {"prompt": f"add {a} {b} from {pairs} =", "answer": f" {vals[keys.index(a)] + vals[keys.index(b)]}"}


def upper_initials(rng):
    ws = rng.sample(WORDS, rng.randint(3, 5))
    return {"prompt": f"upper initials of {' '.join(ws)} =", "answer": f" {''.join(w[0] for w in ws).upper()}"}


SKILLS = {f.__name__: f for f in (add, reverse, sort_letters, upper, count, lookup, last_word, first_letters)}
DISTRACTORS = {f.__name__: f for f in (noise_words, constant)}
TARGETS = {f.__name__: f for f in (reverse_upper, lookup_add, upper_initials)}
ALL = {**SKILLS, **DISTRACTORS, **TARGETS}


def make_records(task: str, n: int, seed: int) -> list:
    if task not in ALL:
        raise ValueError(f"task must be one of {sorted(ALL)}, got {task!r}")
    rng = random.Random(f"{task}:{seed}")
    return [ALL[task](rng) for _ in range(n)]
