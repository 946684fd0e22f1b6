"""PolyStep full-space MAX-SAT solver, the WalkSAT/probSAT baseline and ``zoopt maxsat``."""
import json
import math

import pytest
import torch

from zoopt.cli import main as cli_main
from zoopt.maxsat import PolyStepMaxSAT, hard_assignment, reference_constants
from zoopt.problems.maxsat import MaxSATInstance, MaxSATProblem, parse_solution, random_ksat, write_dimacs
from zoopt.spec import PointsSpec
from zoopt.walksat import local_search


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is much faster than two on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_reference_constants_are_the_effective_ones():
    small = reference_constants(100_000)
    assert small == {"cost_scale": "fraction", "epsilon": 5.0, "step_radius": 3000.0, "probe_radius": 100.0,
                     "steps": 3000}
    r = reference_constants(10_000)
    assert r["step_radius"] == pytest.approx(3000 * math.sqrt(0.1)) and r["probe_radius"] == pytest.approx(100 * math.sqrt(0.1))
    assert reference_constants(1_000_000) == {"cost_scale": "count", "epsilon": 5.0, "step_radius": 5000.0,
                                              "probe_radius": 500.0, "steps": 500}


def test_hard_assignment_encodings():
    x = torch.tensor([-2.0, -1e-3, 0.0, 1e-3, 3.0])
    assert hard_assignment(x, "sign").tolist() == [False, False, False, True, True]
    assert hard_assignment(x, "sigmoid").tolist() == [False, False, False, True, True]
    with pytest.raises(ValueError, match="encoding"):
        hard_assignment(x, "tanh")


def test_polystep_solves_random_3sat_well_and_reproducibly():
    inst = random_ksat(600, seed=42)
    res = PolyStepMaxSAT(inst, seed=1).run(300)
    # a uniformly random assignment satisfies 7/8; greedy-free reference runs reach ~98% at this size
    assert res.satisfied_fraction >= 0.97
    assert res.cost == inst.cost(res.assign) == res.report["unsat_clauses"]
    assert res.steps == 300
    # 100 evaluating steps x 300 particles x 4 vertices + one full evaluation per step + the final one
    assert res.evaluations == 100 * 300 * 4 + 301
    again = PolyStepMaxSAT(inst, seed=1).run(300)
    assert torch.equal(again.assign, res.assign)
    other = PolyStepMaxSAT(inst, seed=2).run(300)
    assert not torch.equal(other.assign, res.assign)


def test_polystep_momentum_and_amortization_follow_the_reference_rule():
    inst = random_ksat(50, seed=0)
    s = PolyStepMaxSAT(inst, seed=0, momentum_warmup=49)
    assert s.momentum_beta() == pytest.approx(0.5)
    s.it = 49
    assert s.momentum_beta() == pytest.approx(0.95)
    s.it = 400
    assert s.momentum_beta() == pytest.approx(0.95)
    s = PolyStepMaxSAT(inst, seed=0)
    s.step()                                         # evaluating step: sets the coast direction
    x1, coast = s.x.clone(), s.coast.clone()
    assert coast.abs().sum() > 0
    s.step()                                         # coast step 1: x += (1 - 1/3) * coast
    assert torch.allclose(s.x, x1 + (2 / 3) * coast)
    s.step()                                         # coast step 2: x += (1 - 2/3) * coast
    assert torch.allclose(s.x, x1 + coast)
    # the OT displacement of one step is at most the step radius per particle (no momentum)
    s = PolyStepMaxSAT(inst, seed=0, momentum=False, amortize=1)
    x0 = s.x.clone()
    s.step()
    assert float((s.x - x0).norm(dim=1).max()) <= s.step_radius * (1 + 1e-9)


def test_polystep_respects_hard_clauses():
    base = random_ksat(200, n_clauses=600, seed=3)
    clauses = base.clauses()
    # plant: every hard clause agrees with a hidden assignment
    g = torch.Generator().manual_seed(0)
    hidden = torch.rand(200, generator=g) < 0.5
    hard = [(i % 10) < 3 and any(hidden[abs(l) - 1] == (l > 0) for l in c) for i, c in enumerate(clauses)]
    assert sum(hard) > 100
    inst = MaxSATInstance.from_clauses(clauses, n_vars=200, weights=[1.0 + (i % 3) for i in range(600)], hard=hard)
    res = PolyStepMaxSAT(inst, seed=0).run(300)
    assert res.report["hard_violated"] == 0
    assert res.report["satisfied_fraction"] > 0.93


def test_cosine_anneal_to_final_values():
    inst = random_ksat(40, seed=0)
    s = PolyStepMaxSAT(inst, seed=0, epsilon=5.0, final={"epsilon": 0.5})
    s.total_steps = 100
    assert s.scheduled("epsilon") == pytest.approx(5.0)
    s.it = 50
    assert s.scheduled("epsilon") == pytest.approx(2.75)
    s.it = 100
    assert s.scheduled("epsilon") == pytest.approx(0.5)
    assert s.scheduled("step_radius") == s.step_radius       # not annealed
    with pytest.raises(ValueError, match="final"):
        PolyStepMaxSAT(inst, final={"sigma": 1.0})


def test_solver_rejects_bad_arguments():
    inst = random_ksat(20, seed=0)
    for kwargs, fragment in [({"epsilon": 0.0}, "epsilon"), ({"amortize": 0}, "amortize"),
                             ({"cost_scale": "max"}, "cost_scale"), ({"encoding": "x"}, "encoding"),
                             ({"particle_dim": 0}, "particle_dim"), ({"seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=fragment):
            PolyStepMaxSAT(inst, **kwargs)
    with pytest.raises(TypeError, match="MaxSATInstance"):
        PolyStepMaxSAT([[1, 2]])


@pytest.mark.parametrize("method", ["walksat", "probsat"])
def test_local_search_baseline(method):
    inst = random_ksat(300, seed=5)
    res = local_search(inst, method=method, seed=0, max_flips=20_000)
    assert res.satisfied_fraction >= 0.98
    assert res.cost == inst.cost(res.assign)
    assert res.flips <= 20_000


def test_maxsat_problem_scores_population_points():
    inst = random_ksat(30, seed=2)
    prob = MaxSATProblem(inst)
    pts = torch.randn(6, 30)
    spec = PointsSpec(center=torch.zeros(30), popsize=6, generation=0, seed=0, candidates=pts)
    fit = prob.evaluate(spec, range(6))
    want = torch.tensor([inst.cost(p > 0) / inst.n_clauses for p in pts])
    assert torch.allclose(fit.double(), want.double(), atol=1e-6)


def test_cli_random_and_wcnf(tmp_path, capsys):
    out = tmp_path / "sol.sol"
    assert cli_main(["maxsat", "--random", "120", "--seed", "0", "--steps", "60", "--no-progress",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "satisfied" in printed and "peak memory" in printed
    summary = json.loads((tmp_path / "sol.json").read_text())
    inst = random_ksat(120, seed=0)
    assign = parse_solution(out.read_text(), 120)
    assert inst.cost(assign) == summary["cost"]
    assert out.read_text().splitlines()[0] == f"o {int(summary['cost'])}"

    wpath = tmp_path / "w.wcnf"
    inst = MaxSATInstance.from_clauses([[1, 2], [-1, 3], [-3], [2, -4]], n_vars=4, weights=[2, 3, 1, 5],
                                       hard=[False, True, False, False])
    write_dimacs(inst, wpath)
    out2 = tmp_path / "w.sol"
    assert cli_main(["maxsat", "--wcnf", str(wpath), "--steps", "30", "--no-progress", "--out", str(out2)]) == 0
    a = parse_solution(out2.read_text(), 4)
    assert inst.evaluate(a)["hard_violated"] == 0
    # x1 = x3 = False, x2 = True satisfies every clause; pair moves may stop at cost 1 (x3 True needs
    # x1 True first, a zero-gain move for the pair (x1, x2))
    assert inst.cost(a) <= 1.0

    bad = tmp_path / "bad.cnf"
    bad.write_text("p cnf 2 1\n1 z 0\n")
    with pytest.raises(SystemExit, match="line 2"):
        cli_main(["maxsat", "--cnf", str(bad), "--no-progress"])
