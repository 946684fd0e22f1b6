"""PolyStep full-space MAX-SAT solver, the WalkSAT/probSAT baseline and ``zoopt maxsat``."""
import json
import math
import os

import pytest
import torch

from zoopt.cli import main as cli_main
from zoopt.maxsat import PolyStepMaxSAT, check_memory, hard_assignment, maxsat_constants, reference_constants
from zoopt.polystep import Constant, PolyStepES
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
    # zoopt's default: the same at every size (count cost, a probe radius no |x| reaches)
    assert maxsat_constants(1_000) == maxsat_constants(1_000_000) == {
        "cost_scale": "count", "epsilon": 5.0, "step_radius": 5000.0, "probe_radius": 1e12, "steps": 3000}
    with pytest.raises(ValueError, match="preset"):
        maxsat_constants(10, "paper")


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
    s = PolyStepMaxSAT(inst, seed=0)
    beta = s.stepper.beta                            # the one momentum rule (ParticleStepper)
    assert beta(0) == pytest.approx(0.5) and beta(49) == pytest.approx(0.95) and beta(400) == pytest.approx(0.95)
    s.step()                                         # evaluating step: sets the coast direction
    x1, coast = s.x.clone(), s.stepper.dbar.clone()
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
    s = PolyStepMaxSAT(inst, seed=0, epsilon=5.0, steps=100, final={"epsilon": 0.5})
    eps = s.stepper.epsilon                          # one schedule module (zoopt.polystep.schedules)
    assert eps.at(0) == pytest.approx(5.0) and eps.at(50) == pytest.approx(2.75) and eps.at(100) == pytest.approx(0.5)
    assert s.stepper.step_radius.at(70) == s.step_radius       # not annealed, and used as is (not times eps)
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


def test_cli_random_and_wcnf_into_run_folders(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["maxsat", "--random", "120", "--seed", "0", "--steps", "60", "--no-progress",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "satisfied" in printed and "peak memory" in printed
    summary = json.loads((out / "summary.json").read_text())
    inst = random_ksat(120, seed=0)
    sol = (out / "solution.sol").read_text()
    assign = parse_solution(sol, 120)
    assert inst.cost(assign) == summary["cost"] and summary["steps"] == 60
    assert sol.splitlines()[0] == f"o {int(summary['cost'])}"
    assert (out / "checkpoint.pt").exists()
    # the folder holds a run: refuse to overwrite it, continue it with --resume, replace it with --force
    assert cli_main(["maxsat", "--random", "120", "--steps", "90", "--no-progress", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli_main(["maxsat", "--random", "120", "--steps", "90", "--no-progress", "--out", str(out),
                     "--resume"]) == 0
    assert "resumed at step 60" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 90
    assert cli_main(["maxsat", "--random", "120", "--steps", "30", "--no-progress", "--out", str(out),
                     "--force"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 30

    wpath = tmp_path / "w.wcnf"
    inst = MaxSATInstance.from_clauses([[1, 2], [-1, 3], [-3], [2, -4]], n_vars=4, weights=[2, 3, 1, 5],
                                       hard=[False, True, False, False])
    write_dimacs(inst, wpath)
    out2 = tmp_path / "w"
    assert cli_main(["maxsat", "--wcnf", str(wpath), "--steps", "30", "--no-progress", "--out", str(out2)]) == 0
    a = parse_solution((out2 / "solution.sol").read_text(), 4)
    assert inst.evaluate(a)["hard_violated"] == 0
    # x1 = x3 = False, x2 = True satisfies every clause; pair moves may stop at cost 1 (x3 True needs
    # x1 True first, a zero-gain move for the pair (x1, x2))
    assert inst.cost(a) <= 1.0

    bad = tmp_path / "bad.cnf"
    bad.write_text("p cnf 2 1\n1 z 0\n")
    assert cli_main(["maxsat", "--cnf", str(bad), "--no-progress", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "bad.cnf: line 2:" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, fragment", [
    (["--amortize", "0"], "--amortize"), (["--epsilon", "-1"], "--epsilon"), (["--epsilon", "nan"], "--epsilon"),
    (["--steps", "-3"], "--steps"), (["--threads", "0"], "--threads"), (["--random", "0"], "--random"),
])
def test_cli_rejects_bad_numbers_in_one_line(argv, fragment, capsys, tmp_path):
    args = ["maxsat", "--no-progress", "--out", str(tmp_path / "r")]
    args += argv if "--random" in argv else ["--random", "30"] + argv
    with pytest.raises(SystemExit) as exc:
        cli_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_cli_checks_memory_before_building_a_huge_instance(capsys, tmp_path):
    # 2e9 variables pass the int32 limit but need ~1 TB: refused before anything is allocated
    assert cli_main(["maxsat", "--random", "2000000000", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "available" in err
    with pytest.raises(ValueError, match="GiB"):
        check_memory(2_000_000_000, 8_540_000_000, 3 * 8_540_000_000)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    inst = random_ksat(300, seed=4)
    straight = PolyStepMaxSAT(inst, seed=3, steps=45)
    res = straight.run()
    first = PolyStepMaxSAT(inst, seed=3, steps=45)
    ckpt = str(tmp_path / "c.pt")
    first.run(steps=20, checkpoint=ckpt)                 # stops between an evaluated step and its coasts
    assert first.it == 20 and first.stepper.is_coast()
    second = PolyStepMaxSAT(inst, seed=3, steps=45)
    second.load(ckpt)
    again = second.run()
    assert torch.equal(second.x, straight.x) and torch.equal(second.stepper.velocity, straight.stepper.velocity)
    assert torch.equal(again.assign, res.assign) and again.cost == res.cost
    assert again.evaluations == res.evaluations and again.steps == res.steps == 45
    # a checkpoint only resumes its own instance and settings
    with pytest.raises(ValueError, match="another instance"):
        PolyStepMaxSAT(random_ksat(300, seed=5), seed=3, steps=45).load(ckpt)
    with pytest.raises(ValueError, match="epsilon"):
        PolyStepMaxSAT(inst, seed=3, steps=45, epsilon=2.0).load(ckpt)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        PolyStepMaxSAT(inst, seed=3, steps=45).load(str(tmp_path / "junk.pt"))


def test_ctrl_c_saves_the_finished_step_and_resumes_exactly(tmp_path):
    import signal

    from zoopt.training.interrupt import TrainingInterrupted

    inst = random_ksat(200, seed=6)
    plain = PolyStepMaxSAT(inst, seed=1, steps=30)
    straight = plain.run()
    ckpt = str(tmp_path / "c.pt")
    solver = PolyStepMaxSAT(inst, seed=1, steps=30)

    def ctrl_c(stats):
        if stats["step"] == 10:
            os.kill(os.getpid(), signal.SIGINT)      # arrives while the run is between steps 10 and 11

    with pytest.raises(TrainingInterrupted, match="stopped at step 11"):
        solver.run(checkpoint=ckpt, callback=ctrl_c)
    resumed = PolyStepMaxSAT(inst, seed=1, steps=30)
    resumed.load(ckpt)
    assert resumed.it == 11
    again = resumed.run()
    assert torch.equal(again.assign, straight.assign) and torch.equal(resumed.x, plain.x)
    assert again.evaluations == straight.evaluations and again.cost == straight.cost


def test_block_specs_are_scored_without_building_points(monkeypatch):
    """MaxSATProblem scores PolyStep's block spec by delta evaluation, equal to scoring its points."""
    inst = random_ksat(61, seed=9)
    es = PolyStepES(torch.randn(61, generator=torch.Generator().manual_seed(0)), solver="softmax",
                    epsilon=Constant(1.0), step_radius=Constant(2.0), probe_radius=Constant(3.0), seed=4)
    spec = es.ask()
    assert spec.kind == "block"
    prob = MaxSATProblem(inst, cost_scale="count")
    want = torch.tensor([inst.cost(p > 0) for p in spec.points()], dtype=torch.float64)
    monkeypatch.setattr(type(spec), "points", lambda *a, **k: pytest.fail("built candidate points"))
    got = prob.evaluate(spec)
    assert torch.equal(got, want)
    assert torch.equal(prob.evaluate(spec, [5, 2, 7]), want[[5, 2, 7]])
    monkeypatch.undo()
    es.tell(got)                                         # the strategy consumes them as any fitness


def test_default_constants_keep_improving_where_the_reference_1m_constants_freeze():
    """Issue 17: count costs at eps 5 push every |x| past rho / 2 = 250 within a few dozen steps, after
    which no probe flips a variable; a probe radius above every |x| keeps the steps paying."""
    inst = random_ksat(1000, seed=1)
    frozen = PolyStepMaxSAT(inst, seed=0, steps=450, cost_scale="count", epsilon=5.0, step_radius=5000.0,
                            probe_radius=500.0)
    best = {h["step"]: h["best"] for h in frozen.run(log_every=150).history}
    assert best[150] == best[300] == best[450]           # the reference 1M constants: stuck from step ~100
    assert float((frozen.x.abs() > 250).float().mean()) > 0.95
    ours = PolyStepMaxSAT(inst, seed=0, steps=450)
    best = {h["step"]: h["best"] for h in ours.run(log_every=150).history}
    assert best[450] < best[300] < best[150] < 0.02 * inst.n_clauses


def _bench_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "bench_maxsat.py")
    spec = importlib.util.spec_from_file_location("bench_maxsat", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def compiled_peer(tmp_path_factory):
    bench = _bench_module()
    cache = str(tmp_path_factory.mktemp("cache"))
    before = os.environ.get("ZOOPT_CACHE")
    os.environ["ZOOPT_CACHE"] = cache
    try:
        binary = bench.build_sls()
        if binary is None:
            pytest.skip("no C compiler")
        assert binary.startswith(cache) and bench.build_sls() == binary   # built once, then found
    finally:
        if before is None:
            del os.environ["ZOOPT_CACHE"]
        else:
            os.environ["ZOOPT_CACHE"] = before
    return bench, binary


@pytest.mark.parametrize("method", ["probsat", "walksat"])
def test_compiled_local_search_peer(method, compiled_peer):
    """Issue 19: the C probSAT/WalkSAT peer builds into the cache folder, and the cost it claims is
    the cost of the assignment it prints (checked against MaxSATInstance)."""
    bench, binary = compiled_peer
    inst = random_ksat(300, seed=5)
    out = bench.run_sls_c(binary, inst, method, seed=0, max_flips=20_000)
    assert out["satisfied"] >= 0.98 and out["flips"] <= 20_000
    assert inst.evaluate(out["assign"])["satisfied_fraction"] == out["satisfied"]
    again = bench.run_sls_c(binary, inst, method, seed=0, max_flips=20_000)
    assert torch.equal(again["assign"], out["assign"])                               # seeded
    with pytest.raises(ValueError, match="unweighted"):
        bench.run_sls_c(binary, MaxSATInstance.from_clauses([[1]], weights=[2.0]), method, seed=0, max_flips=10)
