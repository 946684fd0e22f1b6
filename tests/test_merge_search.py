"""The two-stage search keeps one best point over both stages."""
import numpy as np
import pytest

pytest.importorskip("cma")
from zoopt.merge.search import EvoMerge  # noqa: E402

N = 4


def test_stage_one_best_is_kept_when_stage_two_never_beats_it():
    uniform = [1.0 / N] * N
    seen = []

    def evaluate_many(pairs):  # stage 1 (beta = 1/N) can reach a low loss; every stage-2 beta is worse
        losses = [abs(np.mean(a) - 0.8) if list(b) == uniform else 2.0 + float(np.abs(b).sum()) for a, b in pairs]
        seen.extend(losses)
        return losses

    result = EvoMerge(N, popsize=6, seed=0, budget_alpha=60, budget_beta=60).run(evaluate_many)
    assert result["stage"] == "alpha" and result["beta"] == uniform
    assert result["loss"] == result["stages"]["alpha"]["loss"] < result["stages"]["beta"]["loss"]
    assert result["loss"] <= min(seen[:60]) + 0.05  # stage 1's best (by penalised fitness)
    assert result["queries"] == 120


def test_stage_two_wins_when_it_is_better():
    def evaluate_many(pairs):
        return [float(np.sum((np.asarray(b) - 0.6) ** 2)) for _, b in pairs]

    result = EvoMerge(N, popsize=6, seed=1, budget_alpha=30, budget_beta=120).run(evaluate_many)
    assert result["stage"] == "beta"
    assert result["loss"] < result["stages"]["alpha"]["loss"]
    assert result["fitness"] == min(s["fitness"] for s in result["stages"].values())
