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
