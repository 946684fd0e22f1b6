"""Ray clusters: the private one is loopback-only and token-protected; joining an existing cluster keeps
its credentials; a real two-node cluster survives losing a node (issue 16 §1-2)."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from conftest_ray import ray_cluster  # noqa: E402,F401

# A peer process that tries to join the cluster at argv[1] and run a task there. It gets every advantage but
# the token: Ray's multi-node switch off and the cluster's own host as its node address, so a loopback-only
# cluster is reachable and only authentication can stop it.
JOIN_AND_RUN = """
import sys, ray
address = sys.argv[1]
ray.init(address=address, _node_ip_address=address.rsplit(":", 1)[0], log_to_driver=False)

@ray.remote(num_cpus=0)
def task():
    return "TASK RAN"

print(ray.get(task.remote(), timeout=30))
"""


def _peer_env(**auth):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1", **auth)
    return env


def _try_to_join(address, env) -> str:
    try:
        run = subprocess.run([sys.executable, "-c", JOIN_AND_RUN, address], env=env, capture_output=True,
                             text=True, timeout=45)
    except subprocess.TimeoutExpired:
        return "timed out"
    return run.stdout + run.stderr


def _cluster_processes():
    """This process and the Ray processes it started (GCS, raylet, agents, workers)."""
    me = psutil.Process()
    return [me] + me.children(recursive=True)


def test_the_private_cluster_listens_on_loopback_only_and_refuses_peers_without_its_token(ray_cluster):
    ray = ray_cluster
    address = ray.get_runtime_context().gcs_address
    assert address.rsplit(":", 1)[0] == "127.0.0.1"
    listening = []
    for proc in _cluster_processes():
        try:
            listening += [(proc.name(), c.laddr) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert any(name == "gcs_server" for name, _ in listening) and any(name == "raylet" for name, _ in listening)
    exposed = [(name, addr) for name, addr in listening if addr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"

    token_path = os.environ["RAY_AUTH_TOKEN_PATH"]
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in os.environ
    assert os.stat(token_path).st_mode & 0o077 == 0  # only this user can read the token
    token = open(token_path).read()
    assert len(token) >= 32
    peers = {"no auth": _peer_env(RAY_AUTH_MODE="disabled"),
             "wrong token": _peer_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * len(token)),
             "the token": _peer_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)}
    with ThreadPoolExecutor(len(peers)) as pool:
        outcome = dict(zip(peers, pool.map(lambda env: _try_to_join(address, env), peers.values())))
    assert "TASK RAN" not in outcome["no auth"], outcome["no auth"]
    assert "TASK RAN" not in outcome["wrong token"], outcome["wrong token"]
    assert "TASK RAN" in outcome["the token"], outcome["the token"]  # the refusals are authentication's doing

    # the token is in no log of the cluster (the workers' stdout/stderr included)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    for root, _, files in os.walk(session_dir):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    assert token.encode() not in f.read(), f"the token is in {name}"
            except OSError:
                continue


def test_an_address_means_ray_and_every_command_gets_the_same_option():
    import argparse

    from zoopt.workers import add_cluster_arguments, make_evaluator, resolve_backend

    assert resolve_backend(1) == "local" and resolve_backend(1, None, "auto") == "ray"
    assert resolve_backend(4, None, "10.0.0.1:6379") == "ray"
    with pytest.raises(ValueError, match="address"):
        resolve_backend(1, "local", "auto")
    with pytest.raises(ValueError, match="address"):
        resolve_backend(1, None, "")
    with pytest.raises(ValueError, match="address"):
        make_evaluator("local", address="auto")
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    assert parser.parse_args([]).address is None
    assert parser.parse_args(["--address", "10.0.0.1:6379"]).address == "10.0.0.1:6379"


def test_joining_a_dead_address_fails_fast_naming_it():
    from zoopt.workers.ray_cluster import connect

    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        connect("127.0.0.1:9", connect_timeout_s=2)


# -- a real two-node cluster -------------------------------------------------------------------------------

# The driver: joins the cluster at argv[1] with RayEvaluator(address=...), 2 actors spread over the nodes,
# runs OpenAI-ES generations; in generation 2 the actor on the second node kills that node's raylet (its own
# parent process, pid argv[2]) mid-range. Prints the run's centers and fitness next to the in-process run's.
DRIVER = """
import json, os, signal, sys, time
import torch
import zoopt
from zoopt.problems import Problem, VectorProblem
from zoopt.workers import LocalEvaluator
from zoopt.workers.ray_cluster import connect
from zoopt.workers.ray_evaluator import RayEvaluator
import ray

address, victim, log_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def sphere(x):
    return (x ** 2).sum(1) + torch.sin(3 * x).sum(1)


class KillsItsNode(Problem):
    def __init__(self):
        self.inner = VectorProblem(sphere, 8)
        self.dim = 8

    def evaluate(self, spec, members):
        raylet = os.getppid()
        open(os.path.join(log_dir, f"node-{raylet}"), "a").close()  # which raylets' workers evaluated
        if raylet == victim and spec.generation == 2:
            os.kill(raylet, signal.SIGKILL)
            time.sleep(120)  # this worker goes down with its node
        return self.inner.evaluate(spec, members)


def run(evaluator, problem):
    es = zoopt.OpenAIES(torch.linspace(-1, 1, 8), popsize=64, sigma=0.3, lr=0.05, seed=4)
    trace = []
    for generation in range(4):
        spec = es.ask()
        fitness = evaluator(problem, spec)
        if generation == 0 and hasattr(evaluator, "actor_cpu_seconds"):
            evaluator.actor_cpu_seconds()  # returns once both actors hold the problem: both take ranges now
        es.tell(fitness)
        trace.append([fitness.tolist(), es.center.tolist()])
    return trace


expected = run(LocalEvaluator(), VectorProblem(sphere, 8))
connect(address)  # the evaluator below reuses this connection (and would make it the same way)
while sum(node["Alive"] for node in ray.nodes()) < 2:  # the second node may still be registering
    time.sleep(0.2)
with RayEvaluator(2, address=address, actor_config={"num_cpus": 0.5, "scheduling_strategy": "SPREAD"}) as ev:
    start = time.monotonic()
    got = run(ev, KillsItsNode())
    result = {"same": got == expected, "faults": ev.faults, "replaced": ev.replaced,
              "seconds": time.monotonic() - start}
    print("RESULT", json.dumps(result), flush=True)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args, env, log):
    """``ray start ... --block`` in the foreground: its children are the node's processes, and SIGTERM to it
    stops exactly them (never ``ray stop``, which would stop every cluster on the machine)."""
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
             f"--runtime-env-agent-port={_free_port()}"]
    return subprocess.Popen([ray_cli, "start", "--block", "--disable-usage-stats", "--log-style=record", *ports, *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(procs) -> None:
    family = []
    for proc in procs:
        try:
            family += [proc] + psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for p in family:  # anything of ours still there (by recorded pid only)
        try:
            if isinstance(p, psutil.Process) and p.is_running():
                p.kill()
        except psutil.Error:
            pass


@pytest.fixture
def two_nodes(tmp_path):
    """A head (2 CPUs) and a second node (1 CPU) started with ``ray start``, token authentication on; yields
    (address, the second node's raylet pid, the environment that holds the token)."""
    import secrets
    import socket
    import tempfile
    import time

    base = tempfile.mkdtemp(prefix="zr")  # short: Ray's unix socket paths must fit in 107 characters
    token_path = os.path.join(base, "token")
    with os.fdopen(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    port = _free_port()
    procs = []
    try:
        procs.append(_ray_start(["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 f"--temp-dir={base}/ray"], env, open(tmp_path / "head.log", "w")))
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "head.log").read_text()
                time.sleep(0.2)
        address = f"127.0.0.1:{port}"
        procs.append(_ray_start([f"--address={address}", "--num-cpus=1"], env, open(tmp_path / "node2.log", "w")))
        raylet = None
        while raylet is None:
            assert time.monotonic() < deadline and procs[1].poll() is None, (tmp_path / "node2.log").read_text()
            raylet = next((p.pid for p in psutil.Process(procs[1].pid).children(recursive=True)
                           if p.name() == "raylet"), None)
            time.sleep(0.2)
        yield address, raylet, env
    finally:
        _stop(procs)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_a_two_node_cluster_loses_a_node_mid_run_and_the_result_is_unchanged(two_nodes, tmp_path):
    """Head + second node (``ray start``, own processes and CPUs, token auth), the driver joins with
    ``address=``, actors spread over both nodes; the second node's raylet is SIGKILLed in generation 2."""
    import json

    address, raylet, env = two_nodes
    log_dir = tmp_path / "nodes"
    log_dir.mkdir()
    run = subprocess.run([sys.executable, "-c", DRIVER, address, str(raylet), str(log_dir)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(results[0][len("RESULT "):])
    evaluated_on = {name.split("-")[1] for name in os.listdir(log_dir)}
    assert str(raylet) in evaluated_on and len(evaluated_on) == 2  # actors on both nodes
    assert not psutil.pid_exists(raylet) or psutil.Process(raylet).status() == psutil.STATUS_ZOMBIE
    assert out["replaced"] >= 1 and any("died" in f for f in out["faults"]), out
    assert out["same"], out  # every generation's fitness and center equal the in-process run's, bit for bit
