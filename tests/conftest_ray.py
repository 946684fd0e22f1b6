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


@pytest.fixture
def one_thread():
    """Bit equality with actors needs the driver to compute with the actors' thread count (1): GEMMs round
    differently with more threads, and torch's default here is 2."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
