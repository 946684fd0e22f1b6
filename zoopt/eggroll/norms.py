"""Population-aware norms (placeholder)."""
NORMS = ()
SWAPS = {}
