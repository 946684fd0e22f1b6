import math

import pytest
import torch

from zoopt.shaping import NonFiniteFitnessError, centered_ranks, sanitize_fitness, shape_fitness, zscore


def test_centered_ranks_range_order_and_ties():
    r = centered_ranks(torch.tensor([3.0, 1.0, 2.0, 10.0]))
    assert torch.allclose(r, torch.tensor([1 / 6, -0.5, -1 / 6, 0.5]))
    tied = centered_ranks(torch.tensor([1.0, 1.0, 5.0]))
    assert tied[0] == tied[1] and float(tied.sum()) == pytest.approx(0.0, abs=1e-7)
    assert float(tied[2]) == 0.5


def test_ranks_ignore_scale():
    f = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(centered_ranks(f), centered_ranks(f * 1000 + 7))


def test_zscore_moments():
    z = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(z.mean()) == pytest.approx(0, abs=1e-6)
    assert float(z.std(unbiased=False)) == pytest.approx(1, abs=1e-6)
    assert torch.isfinite(zscore(torch.ones(4))).all()  # eps keeps constant fitness finite


def test_raw_and_unknown():
    f = torch.tensor([2.0, -1.0])
    assert torch.equal(shape_fitness(f, "raw"), f)
    with pytest.raises(ValueError, match="fitness_shaping"):
        shape_fitness(f, "softmax")


def test_nonfinite_worst_policy():
    clean, n = sanitize_fitness(torch.tensor([1.0, math.nan, 3.0, -math.inf, math.inf]))
    assert n == 3
    assert clean.tolist() == [1.0, 3.0, 3.0, 3.0, 3.0]


def test_nonfinite_raise_policy_and_all_bad():
    with pytest.raises(NonFiniteFitnessError):
        sanitize_fitness(torch.tensor([1.0, math.nan]), "raise")
    with pytest.raises(NonFiniteFitnessError, match="every"):
        sanitize_fitness(torch.tensor([math.nan, math.inf]))
    with pytest.raises(ValueError, match="nonfinite"):
        sanitize_fitness(torch.tensor([1.0]), "ignore")
