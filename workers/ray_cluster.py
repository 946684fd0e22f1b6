"""Starting or joining a Ray cluster, with errors that say what went wrong.

``connect(address=None)`` starts a private single-node cluster that only this
user's processes holding its token can use:

- Ray's token authentication is on (``RAY_AUTH_MODE=token``). The token is
  256 random bits written to a file only this user can read (``0600`` in a
  ``0700`` folder), named to Ray by ``RAY_AUTH_TOKEN_PATH``; it is never put
  in an environment variable's value, printed or logged, and the file is
  removed by :func:`shutdown` (or at exit).
- Every server the cluster starts (GCS, raylet, object manager, workers,
  agents) listens on 127.0.0.1 only. Ray turns a loopback node address into
  the machine's network address unless it believes multi-node clusters are
  off, so that switch is turned off while the cluster starts (it only changes
  how Ray picks the node's address).

``address="auto"`` or ``"host:port"`` joins a running cluster and keeps its
credentials: whatever ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/
``RAY_AUTH_TOKEN_PATH``/``~/.ray/auth_token`` the user set up for it. Ray
itself waits minutes on an address nobody listens on, so an address is probed
over TCP first and a dead one fails in seconds.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager

import ray

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Ray's switch for "multi-node clusters are supported here"; off, it keeps a loopback node address as it is
MULTI_NODE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"

_private = {}  # what connect(None) changed, for shutdown(): {"token_dir": path, "env": {name: old value}}


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
def _environ(**values):
    """Set (str) or remove (None) environment variables while the block runs."""
    old = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _driver_path() -> str:
    """Workers of a private cluster import what the driver can import: sys.path as PYTHONPATH while Ray
    starts (its raylet passes its environment on to every worker it spawns)."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(paths))


@contextmanager
def _loopback_only():
    """Ray keeps the node address 127.0.0.1 (and its C++ servers then bind to it alone) only while it
    believes multi-node clusters are off; the Python processes it starts read the same switch."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ(**{MULTI_NODE_SWITCH: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _reload_auth_config() -> None:
    """Make this process's Ray (its cached config and token) see the current RAY_AUTH_* variables."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _use_new_token() -> None:
    """Write a fresh token to a private file and point this process (and what it starts) at it."""
    _forget_token()  # a previous private cluster ended by ray.shutdown() alone
    token_dir = tempfile.mkdtemp(prefix="zoopt-ray-")  # mode 0700
    path = os.path.join(token_dir, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    _private.update(token_dir=token_dir, env={name: os.environ.get(name) for name in AUTH_ENV})
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    _reload_auth_config()


def _forget_token() -> None:
    """Remove the private token file and restore the RAY_AUTH_* variables connect(None) replaced."""
    if not _private:
        return
    for name, value in _private["env"].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(_private["token_dir"], ignore_errors=True)
    _private.clear()
    try:
        _reload_auth_config()
    except Exception:  # interpreter shutting down
        pass


atexit.register(_forget_token)


def _start_private(num_cpus, num_gpus, init_kwargs) -> None:
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ValueError(f"num_cpus must be an int >= 1 or None, got {num_cpus!r}")
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("log_to_driver", True)
    init_kwargs["_node_ip_address"] = LOOPBACK
    _use_new_token()
    try:
        # RAY_ADDRESS would make ray.init join that cluster instead of starting this private one
        with _loopback_only(), _environ(PYTHONPATH=_driver_path(), RAY_ADDRESS=None):
            ray.init(address=None, num_cpus=num_cpus, num_gpus=num_gpus, **init_kwargs)
    except Exception as exc:
        _forget_token()
        raise RuntimeError(f"Ray could not start a local cluster: {type(exc).__name__}: {exc}") from exc


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            connect_timeout_s: float = 10.0, **init_kwargs) -> bool:
    """Make sure this process is connected to Ray; return True when this call initialised Ray here.

    A given address is probed first, so a dead one fails in seconds. An
    already initialised Ray is then reused as is (returns False). ``address=None``
    starts a private cluster on 127.0.0.1 with token authentication (see the
    module docstring); ``num_gpus`` defaults to 0 there unless torch sees
    CUDA, so Ray never offers a GPU that torch cannot use. Call
    :func:`shutdown` to stop what this call started.
    """
    if address is not None:
        if not isinstance(address, str):
            raise TypeError(f"address must be None, 'auto' or 'host:port', got {type(address).__name__}")
        _probe(_resolve_auto() if address == "auto" else address, connect_timeout_s)
    if ray.is_initialized():
        return False
    if address is None:
        _start_private(num_cpus, num_gpus, dict(init_kwargs))
        return True
    try:
        ray.init(address=address, **init_kwargs)
    except Exception as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token by "
                "RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise ConnectionError(f"could not join the Ray cluster at {address!r}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from exc
    return True


def shutdown() -> None:
    """Disconnect from Ray; the private cluster of :func:`connect` stops and its token file goes."""
    if ray.is_initialized():
        ray.shutdown()
    _forget_token()


def cluster_counts() -> tuple[float, float]:
    """(CPUs, GPUs) the connected cluster offers."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
