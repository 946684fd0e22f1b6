"""HDET: hyperparameter-divergent ensemble training."""
