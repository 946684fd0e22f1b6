"""Population-aware attention (placeholder)."""
SWAPS = {}
