"""CLI subcommands, one module each (see zoopt/cli.py)."""
