"""Simulated HFIs: endpoints with no guest that answer the SM as hfi1's SMA does.

    devmodel/simnode/hfi.py   SimulatedHfi: one port, the shared SMA and PMA (devmodel/switch)
"""
from .hfi import SimulatedHfi

__all__ = ["SimulatedHfi"]
