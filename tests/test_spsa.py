"""SPSA: the update rule, gains, determinism, resume and the registry entry."""
import numpy as np
import pytest
import torch

import zoopt
from zoopt.spsa import SPSA


def test_one_step_on_a_linear_function_matches_the_formula():
    g = torch.tensor([1.0, -2.0, 0.5, 3.0])
    es = SPSA(torch.zeros(4), a=0.2, c=0.1, A=5.0, seed=3)
    spec = es.ask()
    delta = es.direction(0)
    assert set(delta.tolist()) <= {-1.0, 1.0}
    a1, c1 = 0.2 / 6.0 ** 0.602, 0.1
    assert torch.allclose(spec.points(), torch.stack([c1 * delta, -c1 * delta]))
    es.tell(spec.points() @ g)
    # (f+ - f-) / (2 c) = g . delta exactly for a linear f
    assert torch.allclose(es.center, -a1 * float(g @ delta) * delta, atol=1e-6)
    a2, c2 = es.gains(2)
    assert a2 == pytest.approx(0.2 / 7.0 ** 0.602) and c2 == pytest.approx(0.1 / 2 ** 0.101)


def test_minimize_with_spsa_converges_and_resumes_bit_for_bit(tmp_path):
    fn = lambda X: ((X - 1.0) ** 2).sum(1)  # noqa: E731
    r = zoopt.minimize(fn, np.zeros(6), method="spsa", budget=2000, seed=0, a=0.5, iterations=1000)
    assert np.abs(r.center - 1.0).max() < 1e-3
    es, twin = SPSA(torch.zeros(6), seed=7, iterations=50), SPSA(torch.zeros(6), seed=7, iterations=50)
    for _ in range(5):
        es.tell(fn(es.ask().points()))
    twin.load_state_dict(es.state_dict())
    for _ in range(5):
        es.tell(fn(es.ask().points()))
        twin.tell(fn(twin.ask().points()))
    assert torch.equal(es.center, twin.center)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="popsize must be 2"):
        SPSA(torch.zeros(3), popsize=4)
    with pytest.raises(ValueError, match="a must be"):
        SPSA(torch.zeros(3), a=0)
    with pytest.raises(ValueError, match="iterations"):
        SPSA(torch.zeros(3), iterations=0)
