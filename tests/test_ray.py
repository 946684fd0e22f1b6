"""RayEvaluator: same fitness as in-process evaluation, faults survived, clear errors."""
import os
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ray")

import zoopt  # noqa: E402
from conftest_ray import ray_cluster  # noqa: E402,F401
from zoopt.problems import ModuleProblem, Problem, VectorProblem  # noqa: E402
from zoopt.workers import LocalEvaluator, make_evaluator  # noqa: E402
from zoopt.workers.ray_evaluator import RayEvaluator  # noqa: E402

# Workers import this module's problem classes by value, whoever started Ray.
import ray  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def rastrigin(x):
    return 10 * x.shape[1] + (x ** 2 - 10 * torch.cos(2 * torch.pi * x)).sum(1)


class FaultOnce(Problem):
    """Wraps a problem; the first evaluation (across processes, via a marker file) of a slice that
    contains ``trigger`` dies (``exit``), is killed by ``ray.kill`` (``kill``) or hangs (``hang``)."""

    def __init__(self, inner, marker, trigger, how):
        self.inner, self.dim, self.marker, self.trigger, self.how = inner, inner.dim, str(marker), trigger, how

    def evaluate(self, spec, members):
        if bool((torch.as_tensor(members) == self.trigger).any()) and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            if self.how == "exit":
                os._exit(1)
            if self.how == "kill":
                import ray as ray_in_actor

                ray_in_actor.kill(ray_in_actor.get_runtime_context().current_actor, no_restart=True)
            time.sleep(300)
        return self.inner.evaluate(spec, members)


class SlowInOneProcess(Problem):
    """Logs which process evaluated each slice; the first process to claim ``slow`` sleeps 1 s per slice."""

    def __init__(self, inner, log_dir):
        self.inner, self.dim, self.log_dir = inner, inner.dim, str(log_dir)

    def evaluate(self, spec, members):
        claim = os.path.join(self.log_dir, "slow")
        try:
            with open(claim, "x") as f:
                f.write(str(os.getpid()))
        except FileExistsError:
            pass
        with open(claim) as f:
            slow = f.read() == str(os.getpid())
        with open(os.path.join(self.log_dir, f"{os.getpid()}.log"), "a") as f:
            f.write("x")
        if slow:
            time.sleep(1.0)
        return self.inner.evaluate(spec, members)


class LogRangeSizes(Problem):
    """Appends the size of every range it evaluates to ``<log_dir>/<pid>.log``, one per line."""

    def __init__(self, inner, log_dir):
        self.inner, self.dim, self.log_dir = inner, inner.dim, str(log_dir)

    def evaluate(self, spec, members):
        with open(os.path.join(self.log_dir, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{len(members)}\n")
        return self.inner.evaluate(spec, members)


class Failing(Problem):
    dim = 4

    def evaluate(self, spec, members):
        raise ValueError("this problem always fails")


@pytest.fixture(scope="module")
def evaluator(ray_cluster):
    # half a CPU per actor leaves the other CPU of the 2-CPU test cluster to the evaluators tests build
    # the default (automatic) time limit with its default 30 s floor
    ev = RayEvaluator(2, actor_config={"num_cpus": 0.5}, max_retries=2)
    yield ev
    ev.close()


def gaussian_spec(dim=12, popsize=96, seed=5):
    es = zoopt.OpenAIES(torch.linspace(-1, 1, dim), popsize=popsize, sigma=0.3, seed=seed)
    return es, es.ask()


def test_vector_problem_same_fitness_as_local(evaluator):
    problem = VectorProblem(rastrigin, 12)
    _, spec = gaussian_spec()
    local = LocalEvaluator()(problem, spec)
    assert torch.equal(evaluator(problem, spec), local)
    assert evaluator.traffic["tasks"] >= 2  # the generation was split across tasks
    members = [3, 90, 17, 4, 5]  # non-contiguous members travel as indices
    assert torch.equal(evaluator(problem, spec, members), local[members])
    # a PointsSpec (CMA-ES) carries its candidates
    spec = zoopt.CMAES(torch.ones(12), popsize=10, sigma=0.5, seed=1).ask()
    assert torch.equal(evaluator(problem, spec), LocalEvaluator()(problem, spec))


def test_module_problem_same_fitness_and_new_problem_reloaded(evaluator):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    problem = ModuleProblem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=32, chunk=16)
    es = zoopt.OpenAIES(problem.initial_point(), popsize=128, sigma=0.05, seed=2)
    for _ in range(2):  # two generations: a new center and minibatch each
        spec = es.ask()
        fitness = evaluator(problem, spec)
        assert torch.equal(fitness, LocalEvaluator()(problem, spec))
        es.tell(fitness)
    assert len(set(fitness.tolist())) > 100  # members really differ


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_dead_actor_is_replaced_and_the_generation_is_unchanged(evaluator, tmp_path, how):
    inner = VectorProblem(rastrigin, 12)
    _, spec = gaussian_spec(popsize=64, seed=9)
    expected = LocalEvaluator()(inner, spec)
    marker = tmp_path / "fault"
    replaced = evaluator.replaced
    fitness = evaluator(FaultOnce(inner, marker, trigger=37, how=how), spec)
    assert marker.exists()  # the fault really happened, in an actor
    assert int(marker.read_text()) != os.getpid()
    assert torch.equal(fitness, expected)
    assert evaluator.replaced > replaced and len(evaluator.actors()) == 2
    assert "died" in evaluator.faults[-1]
    assert torch.equal(evaluator(inner, spec), expected)  # the replacement keeps working


def test_a_hung_range_is_detected_by_the_default_timeout_and_re_run(ray_cluster, tmp_path):
    """timeout_s=None: the limit comes from the ranges that finished (10 x the slowest per member), here
    with a 2 s floor instead of the default 30 s so the test is quick."""
    inner = VectorProblem(rastrigin, 12)
    _, spec = gaussian_spec(popsize=64, seed=9)
    with RayEvaluator(2, actor_config={"num_cpus": 0.5}, min_timeout_s=2.0) as ev:
        assert ev.timeout_s is None
        start = time.monotonic()
        fitness = ev(FaultOnce(inner, tmp_path / "fault", trigger=37, how="hang"), spec)
        took = time.monotonic() - start
        assert torch.equal(fitness, LocalEvaluator()(inner, spec))
        assert ev.replaced == 1 and "time limit" in ev.faults[-1] and "[32, 48)" in ev.faults[-1]
    assert (tmp_path / "fault").exists() and took < 60  # the hanging actor sleeps 300 s


def test_the_default_time_limit_follows_the_measured_range_times():
    from zoopt.workers.ray_pool import HANG_FACTOR, ActorPool

    pool = ActorPool.__new__(ActorPool)
    pool.timeout_s, pool.min_timeout_s, pool._seconds_per_member = None, 30.0, None
    assert pool.time_limit((0, 100), 0) is None  # nothing measured yet: no limit
    pool._seconds_per_member = 1.0  # the slowest finished range took 1 s per member
    assert pool.time_limit((0, 100), 0) == HANG_FACTOR * 100
    assert pool.time_limit((0, 100), 2) == 4 * HANG_FACTOR * 100  # each re-run doubles the limit
    assert pool.time_limit((0, 1), 0) == 30.0  # the floor
    pool.timeout_s = 5.0
    assert pool.time_limit((0, 100), 1) == 10.0  # a fixed timeout_s, doubled per re-run too


def test_fast_actors_take_more_ranges(evaluator, tmp_path):
    inner = VectorProblem(rastrigin, 12)
    _, spec = gaussian_spec(popsize=64)
    problem = SlowInOneProcess(inner, tmp_path)
    evaluator(problem, spec)  # warm-up: both actors load the problem
    for log in tmp_path.glob("*.log"):
        log.unlink()
    evaluator.chunk = 8
    try:
        assert torch.equal(evaluator(problem, spec), LocalEvaluator()(inner, spec))
    finally:
        evaluator.chunk = None
    slow_pid = (tmp_path / "slow").read_text()
    counts = {log.stem: len(log.read_text()) for log in tmp_path.glob("*.log")}
    assert sum(counts.values()) == 8 and len(counts) == 2
    # the slow actor gets its 2 pipelined slices and maybe one more; the fast one takes the rest
    assert counts[slow_pid] <= 3 and max(counts.values()) >= 5


def test_gym_observation_statistics_and_env_steps_come_back(evaluator):
    gym = pytest.importorskip("zoopt.problems.gym")
    pytest.importorskip("gymnasium")
    local_copy, ray_copy = (gym.GymProblem("CartPole-v1", episodes=2, seed=3) for _ in range(2))
    es = zoopt.OpenAIES(local_copy.initial_point(), popsize=12, sigma=0.5, seed=1)
    for _ in range(3):  # normalization statistics of each generation feed the next
        spec = es.ask()
        local = LocalEvaluator()(local_copy, spec)
        assert torch.equal(evaluator(ray_copy, spec), local)
        assert ray_copy.env_steps == local_copy.env_steps > 0
        es.tell(local)
    local_copy.fold(), ray_copy.fold()
    assert local_copy.running.count == ray_copy.running.count > 0
    np.testing.assert_array_equal(local_copy.running.mean, ray_copy.running.mean)


def test_a_failing_problem_raises_its_own_error_naming_the_problem_and_range(evaluator):
    _, spec = gaussian_spec()
    with pytest.raises(ValueError, match="always fails") as err:
        evaluator(Failing(), spec)
    first = str(err.value).splitlines()[0]
    assert first.startswith("Failing.evaluate failed on members [") and first.endswith("this problem always fails")
    assert "\x1b[" not in str(err.value) and "ray::" not in first  # not Ray's colored banner


def test_minimize_with_ray_equals_local(ray_cluster):
    x0 = torch.full((6,), 2.0)
    opts = dict(method="openai_es", budget=320, seed=3, popsize=32, sigma=0.2, lr=0.1)
    local = zoopt.minimize(rastrigin, x0, **opts)
    remote = zoopt.minimize(rastrigin, x0, evaluator="ray",
                            evaluator_options={"num_actors": 2, "actor_config": {"num_cpus": 0.5}}, **opts)
    assert remote.fun == local.fun and np.array_equal(remote.x, local.x)
    assert [h["min"] for h in remote.history] == [h["min"] for h in local.history]


def test_bad_address_fails_fast_with_a_clear_error(ray_cluster):
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="no Ray cluster answers"):
        RayEvaluator(address="127.0.0.1:9")
    assert time.monotonic() - start < 30
    with pytest.raises(ValueError, match="address"):
        RayEvaluator(address="not an address")


def test_bad_arguments_and_missing_gpus_are_refused(ray_cluster):
    for kwargs, match in [(dict(num_actors=0), "num_actors"), (dict(num_actors="many"), "num_actors"),
                          (dict(timeout_s=0), "timeout_s"), (dict(min_timeout_s=-1), "min_timeout_s"),
                          (dict(chunk=0), "chunk"),
                          (dict(num_actors=5, actor_config={"num_cpus": 1}), "CPUs"),
                          (dict(num_actors=2), "free")]:  # the module's evaluator holds one of the 2 CPUs
        with pytest.raises(ValueError, match=match):
            RayEvaluator(**kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            RayEvaluator(1, num_gpus_per_actor=1)
        with pytest.raises(ValueError, match="GPUs"):
            RayEvaluator("num_gpus")
    assert isinstance(make_evaluator("ray", num_actors=1), RayEvaluator)


def test_range_plan_keeps_big_ranges_first_and_a_dynamic_tail():
    from zoopt.workers.ray_plan import factoring_sizes

    assert factoring_sizes(64, 1) == [64]  # one actor: the in-process batches
    assert factoring_sizes(64, 2) == [16, 16, 16, 16]  # default: two ranges per actor
    assert factoring_sizes(64, 2, ranges_per_actor=8) == [16, 16, 8, 8, 4, 4, 4, 4]  # halving down to the tail
    for n, actors, per, align in [(1000, 3, 4, 2), (96, 2, 8, 16), (7, 4, 2, 2), (5, 2, 2, 2), (1024, 8, 8, 64)]:
        sizes = factoring_sizes(n, actors, per, align)
        assert sum(sizes) == n and min(sizes) >= 1
        assert all(s % align == 0 for s in sizes[:-1])  # batched problems see their own chunk boundaries
        assert sizes == sorted(sizes, reverse=True) or sizes[:-1] == sorted(sizes[:-1], reverse=True)
    assert factoring_sizes(0, 2) == []


def test_each_actor_starts_on_one_of_the_big_ranges(ray_cluster, evaluator, tmp_path):
    """Pipelined tasks are dealt breadth-first: the two N/4 ranges go to different actors."""
    _, spec = gaussian_spec(popsize=64)
    problem = LogRangeSizes(VectorProblem(rastrigin, 12), tmp_path)
    with RayEvaluator(2, actor_config={"num_cpus": 0.5}, ranges_per_actor=8, pipeline=2) as ev:
        ev(problem, spec)  # both actors load the problem (meanwhile the first one up may take every range)
        ev.actor_cpu_seconds()  # returns once both have loaded it
        for log in tmp_path.glob("*.log"):
            log.unlink()
        assert torch.equal(ev(problem, spec), LocalEvaluator()(problem.inner, spec))
        assert ev.traffic["tasks"] == 16
    firsts = sorted(int(log.read_text().split()[0]) for log in tmp_path.glob("*.log"))
    assert firsts == [16, 16]
