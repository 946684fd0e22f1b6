"""One Ray cluster per test session (starting one costs seconds): import ``ray_cluster`` from a test module."""
import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local cluster with 2 CPUs, shut down at the end of the session if this fixture started it."""
    ray = pytest.importorskip("ray")
    from zoopt.workers.ray_cluster import connect, shutdown

    started = connect(None, num_cpus=2)
    yield ray
    if started:
        shutdown()
