"""Evo-Merging: black-box merging of LoRA adapters held behind a service.

The service (``service.py``) holds a base LM and a pool of LoRA adapters and
answers only a loss for control vectors alpha (per-adapter density of LoRA-A)
and beta (signed per-adapter scales). The client (``client.py``) searches them
in two CMA-ES stages (``search.py``) by queries alone.
"""
