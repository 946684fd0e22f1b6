"""EGGROLL: low-rank evolution strategies."""
