"""The CHANGELOG's newest version is the one the package reports."""
import os
import re

import zoopt
from zoopt.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_matches_the_changelog(capsys):
    text = open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8").read()
    newest = re.search(r"^## (\d+\.\d+\.\d+)", text, flags=re.M).group(1)
    assert zoopt.__version__ == newest
    try:
        main(["--version"])
    except SystemExit as exc:  # argparse's version action exits 0
        assert exc.code in (0, None)
    assert newest in capsys.readouterr().out
