"""Issue 16 §4: every bad input to minimize and the CLI gets one clear line."""
import json
import sys
import warnings

import numpy as np
import pytest
import torch

import zoopt
from zoopt import cli
from zoopt.atomic import CheckpointError


def sphere(x):
    return (x ** 2).sum(1)


@pytest.mark.parametrize("x0", [np.array([1.0 + 2j, 0.5]), [1j, 1.0], torch.tensor([1.0 + 1j, 2.0])])
def test_complex_x0_is_rejected(x0):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old code ran on the real part with a ComplexWarning
        with pytest.raises(TypeError, match="x0 must be real"):
            zoopt.minimize(sphere, x0, budget=16)


@pytest.mark.parametrize("as_torch", [False, True])
def test_complex_fn_values_are_rejected(as_torch):
    def fn(x):
        return (x ** 2).sum(1) * (1 + 1j)

    x0 = torch.ones(3) if as_torch else np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="fn's return value is complex"):
            zoopt.minimize(fn, x0, budget=16, popsize=8)


def test_fn_returning_strings_is_named():
    with pytest.raises(TypeError, match="fn's return value must be numbers"):
        zoopt.minimize(lambda x: ["bad"] * len(x), np.ones(3), budget=16, popsize=8)
    with pytest.raises(TypeError, match="fn's return value"):
        zoopt.minimize(lambda x: "1.0", np.ones(3), budget=16, popsize=8, vectorized=False)


def test_checkpoint_in_a_missing_folder_fails_before_any_evaluation(tmp_path):
    calls = []

    def fn(x):
        calls.append(1)
        return sphere(x)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoopt.minimize(fn, np.ones(3), budget=400, popsize=8, checkpoint=str(tmp_path / "nope" / "c.pt"),
                       checkpoint_every=5)
    assert calls == []


def _checkpoint(tmp_path, method="openai_es", dim=4):
    path = str(tmp_path / f"{method}-{dim}.pt")
    zoopt.minimize(sphere, np.ones(dim), method=method, budget=32, popsize=8, checkpoint=path, checkpoint_every=1)
    return path


@pytest.mark.parametrize("damage, match", [
    (lambda blob: b"", "empty file"),
    (lambda blob: b"certainly not a checkpoint" * 20, "corrupt or not a torch checkpoint"),
    (lambda blob: blob[: len(blob) // 2], "corrupt or truncated"),
])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, damage, match):
    path = _checkpoint(tmp_path)
    with open(path, "rb") as fh:
        blob = fh.read()
    with open(path, "wb") as fh:
        fh.write(damage(blob))
    with pytest.raises(CheckpointError, match=match) as info:
        zoopt.minimize(sphere, np.ones(4), method="openai_es", budget=64, popsize=8, checkpoint=path, resume=True)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_resume_with_another_dimension_or_method_says_so(tmp_path):
    path = _checkpoint(tmp_path, dim=4)
    with pytest.raises(CheckpointError, match="made for dimension 4; this run has dimension 6"):
        zoopt.minimize(sphere, np.ones(6), method="openai_es", budget=64, popsize=8, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="holds a 'openai_es' run; this run uses 'random'"):
        zoopt.minimize(sphere, np.ones(4), method="random", budget=64, popsize=8, checkpoint=path, resume=True)
    other = str(tmp_path / "other.pt")
    torch.save({"model": torch.ones(3)}, other)
    with pytest.raises(CheckpointError, match="not a zoopt run checkpoint"):
        zoopt.minimize(sphere, np.ones(4), method="openai_es", budget=64, popsize=8, checkpoint=other, resume=True)


def test_resume_without_a_checkpoint_path_is_an_error():
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        zoopt.minimize(sphere, np.ones(3), budget=16, resume=True)


def test_cli_user_error_is_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"generation": 1, "loss": 2.0}\n{not json\n')
    assert cli.main(["plot", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoopt plot: error: ") and f"{bad}:2" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("zoopt plot: error: ")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["plot", str(binary)]) == 2
    assert str(binary) in capsys.readouterr().err


def test_cli_debug_and_real_bugs_keep_the_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "m.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError):
        cli.main(["--debug", "plot", str(bad)])
    monkeypatch.setenv("ZOOPT_DEBUG", "1")
    with pytest.raises(ValueError):
        cli.main(["plot", str(bad)])
    monkeypatch.delenv("ZOOPT_DEBUG")

    def bug(path, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr("zoopt.plot.plot_metrics", bug)
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"generation": 1, "loss": 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["plot", str(good)])


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"zoopt {zoopt.__version__}"


def test_address_goes_to_the_ray_evaluator_only(monkeypatch):
    with pytest.raises(ValueError, match="evaluator='ray'"):
        zoopt.minimize(sphere, np.ones(3), budget=16, address="127.0.0.1:6379")
    seen = {}

    def fake_make_evaluator(evaluator, **kwargs):
        seen.update(kwargs, evaluator=evaluator)
        return zoopt.workers.LocalEvaluator()

    monkeypatch.setattr(sys.modules["zoopt.run"], "make_evaluator", fake_make_evaluator)
    zoopt.minimize(sphere, np.ones(3), budget=16, popsize=8, evaluator="ray", address="10.0.0.5:6379",
                   evaluator_options={"num_actors": 2})
    assert seen == {"evaluator": "ray", "address": "10.0.0.5:6379", "num_actors": 2}


@pytest.mark.parametrize("bounds, match", [
    ((1.0, -1.0), "lower must be < upper"),
    ((np.zeros(2), np.ones(3)), "length 3"),
    ("box", "pair"),
    ((["a"], 1.0), "numbers or None"),
])
def test_bad_bounds_name_themselves(bounds, match):
    with pytest.raises(ValueError, match=match):
        zoopt.minimize(sphere, np.zeros(3), budget=16, bounds=bounds)


def test_x0_outside_bounds_is_rejected():
    with pytest.raises(ValueError, match="x0 is outside bounds at index 1"):
        zoopt.minimize(sphere, np.array([0.0, 5.0]), budget=16, bounds=(-1, 1))


def test_cli_ctrl_c_and_broken_archives_are_one_line(monkeypatch, capsys, tmp_path):
    import zipfile

    def interrupted(path, **kwargs):
        raise KeyboardInterrupt

    def broken(path, **kwargs):
        raise zipfile.BadZipFile(f"{path}: File is not a zip file")

    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"generation": 1, "loss": 1.0}) + "\n")
    monkeypatch.setattr("zoopt.plot.plot_metrics", interrupted)
    try:
        assert cli.main(["plot", str(good)]) == 130
    except KeyboardInterrupt:  # escaping, it would stop the whole pytest session
        pytest.fail("Ctrl-C escaped zoopt.cli.main with a traceback")
    assert capsys.readouterr().err == "zoopt plot: interrupted\n"
    monkeypatch.setattr("zoopt.plot.plot_metrics", broken)
    assert cli.main(["plot", str(good)]) == 2
    assert capsys.readouterr().err.startswith("zoopt plot: error: ")


@pytest.mark.parametrize("argv, flag", [(["--generations", "0"], "--generations"), (["--popsize", "1"], "--popsize")])
def test_demo_flags_are_checked_by_name(argv, flag, capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.startswith(f"zoopt demo: error: {flag} must be")
