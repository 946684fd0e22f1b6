"""PolyStep: optimal-transport polytope steps (see shared research polystep.md)."""
