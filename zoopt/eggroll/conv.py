"""Population-aware convolutions (placeholder)."""
SWAPS = {}
