"""Starting or joining a Ray cluster, with errors that say what went wrong.

``connect(address=None)`` starts a private single-node cluster on 127.0.0.1
(authentication off, no dashboard); ``address="auto"`` or ``"host:port"``
joins a running one. Ray itself waits minutes on an address nobody listens
on, so an address is probed over TCP first and a dead one fails in seconds.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager

import ray


def _probe(address: str, timeout_s: float) -> None:
    """Raise ConnectionError unless something accepts TCP connections at ``host:port``."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address must be 'auto', 'host:port' or 'ray://host:port', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"no Ray cluster answers at {address!r} ({exc}); start one with `ray start --head` "
            f"or pass address=None for a private local cluster") from None


def _resolve_auto() -> str:
    """The address ``ray.init(address='auto')`` would use, or ConnectionError when there is none."""
    from ray._private import services  # private, but it is what ray.init itself calls

    try:
        return services.canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError as exc:
        raise ConnectionError(f"address='auto' found no running Ray cluster: {exc}") from None


@contextmanager
def _driver_path_exported():
    """Workers of a private cluster import what the driver can import: export sys.path as PYTHONPATH
    while Ray starts (its raylet passes its environment on to every worker it spawns)."""
    old = os.environ.get("PYTHONPATH")
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if old:
        paths.append(old)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            connect_timeout_s: float = 10.0, **init_kwargs) -> bool:
    """Make sure this process is connected to Ray; return True when this call initialised Ray here.

    A given address is probed first, so a dead one fails in seconds. An
    already initialised Ray is then reused as is (returns False). ``address=None``
    starts a private cluster on 127.0.0.1 with ``RAY_AUTH_MODE=disabled``;
    ``num_gpus`` defaults to 0 there unless torch sees CUDA, so Ray never
    offers a GPU that torch cannot use.
    """
    if address is not None:
        if not isinstance(address, str):
            raise TypeError(f"address must be None, 'auto' or 'host:port', got {type(address).__name__}")
        _probe(_resolve_auto() if address == "auto" else address, connect_timeout_s)
    if ray.is_initialized():
        return False
    if address is not None:
        try:
            ray.init(address=address, **init_kwargs)
        except Exception as exc:
            raise ConnectionError(f"could not join the Ray cluster at {address!r}: {exc}") from exc
        return True
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ValueError(f"num_cpus must be an int >= 1 or None, got {num_cpus!r}")
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("_node_ip_address", "127.0.0.1")
    init_kwargs.setdefault("log_to_driver", True)
    try:
        with _driver_path_exported():
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **init_kwargs)
    except Exception as exc:
        raise RuntimeError(f"Ray could not start a local cluster: {type(exc).__name__}: {exc}") from exc
    return True


def cluster_counts() -> tuple[float, float]:
    """(CPUs, GPUs) the connected cluster offers."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
