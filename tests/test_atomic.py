"""zoopt.atomic: durable atomic files and folders, weights-only torch checkpoints."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from zoopt import atomic


def test_write_helpers_replace_and_leave_no_temp(tmp_path):
    p = tmp_path / "f.json"
    atomic.write_json(p, {"a": 1})
    atomic.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    atomic.write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "f.json", "t.txt"]


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(p, "w") as fh:
            fh.write("new, half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]
    with pytest.raises(ValueError):  # NaN would make a JSON file other readers reject
        atomic.write_json(p, {"x": float("nan")})
    assert p.read_text() == "old"


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic.write_text(tmp_path / "nope" / "f.txt", "x")


def test_save_torch_is_weights_only_loadable_and_refuses_objects(tmp_path):
    p = tmp_path / "ck.pt"
    state = {"x": torch.arange(3.0), "meta": {"n": 3, "name": "a", "hist": [{"f": 1.5}]}, "t": (1, None)}
    atomic.save_torch(state, p)
    back = torch.load(p, weights_only=True)
    assert torch.equal(back["x"], state["x"]) and back["meta"] == state["meta"]
    with pytest.raises(TypeError, match=r"obj\['meta'\]\['v'\] is a numpy"):
        atomic.save_torch({"meta": {"v": np.float64(1.0)}}, p)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        atomic.save_torch({"a": np.ones(2)}, p)
    assert torch.equal(torch.load(p, weights_only=True)["x"], state["x"])  # untouched


def test_load_torch_names_file_and_problem(tmp_path):
    good = tmp_path / "good.pt"
    atomic.save_torch({"x": torch.ones(4)}, good)
    assert torch.equal(atomic.load_torch(good)["x"], torch.ones(4))
    blob = good.read_bytes()
    cases = {"empty.pt": (b"", "empty file"), "garbage.pt": (b"not a checkpoint at all" * 8, "corrupt"),
             "trunc.pt": (blob[: len(blob) // 2], "corrupt or truncated")}
    for name, (data, problem) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(atomic.CheckpointError, match=name) as info:
            atomic.load_torch(tmp_path / name)
        assert problem in str(info.value) and "allow_pickle" not in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        atomic.load_torch(tmp_path / "missing.pt")


def test_load_torch_pickle_is_opt_in(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save({"a": np.ones(2)}, p)  # a numpy array needs the pickle path
    with pytest.raises(atomic.CheckpointError, match="allow_pickle=True"):
        atomic.load_torch(p)
    assert np.array_equal(atomic.load_torch(p, allow_pickle=True)["a"], np.ones(2))


def test_atomic_dir_replaces_whole_folder(tmp_path):
    d = tmp_path / "best"
    with atomic.atomic_dir(d) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("1")
        open(os.path.join(tmp, "b.txt"), "w").write("1")
    with atomic.atomic_dir(d) as tmp:  # the new version has no b.txt: it must not survive
        open(os.path.join(tmp, "a.txt"), "w").write("2")
    assert sorted(os.listdir(d)) == ["a.txt"] and (d / "a.txt").read_text() == "2"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(d) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("3")
            raise RuntimeError("crash")
    assert (d / "a.txt").read_text() == "2"
    assert os.listdir(tmp_path) == ["best"]  # no temp or aside folder left


_WRITER = textwrap.dedent("""
    import importlib.util, sys
    # load the module by file: the child needs nothing else from zoopt
    spec = importlib.util.spec_from_file_location("zoopt_atomic", sys.argv[3])
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    path, kind = sys.argv[1], sys.argv[2]
    if kind == "torch":
        import torch
    i = 0
    while True:
        i += 1
        blob = bytes([i % 251]) * (4 << 20)
        if kind == "bytes":
            atomic.write_bytes(path, blob)
        else:
            atomic.save_torch({"v": torch.full((1 << 20,), float(i)), "i": i}, path)
        if i == 1:
            print("ready", flush=True)
""")


@pytest.mark.parametrize("kind, rounds", [("bytes", 3), ("torch", 2)])  # each torch round imports torch
def test_sigkill_mid_save_leaves_old_or_new(tmp_path, kind, rounds):
    """A writer killed at random moments: the file is always one complete version."""
    path = str(tmp_path / "state.bin")
    rng = random.Random(0)
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, kind, atomic.__file__], stdout=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if kind == "bytes":
            data = open(path, "rb").read()
            assert len(data) == 4 << 20 and data == bytes([data[0]]) * len(data)
        else:
            state = atomic.load_torch(path)
            assert torch.equal(state["v"], torch.full((1 << 20,), float(state["i"])))


def test_files_and_folders_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as tmp:
            open(os.path.join(tmp, "a"), "w").close()
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
