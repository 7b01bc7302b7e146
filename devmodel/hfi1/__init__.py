"""Intel Omni-Path HFI1 (WFR) chip model, one module per chip block.

See docs/hfi1.md for what is modelled and how the Linux driver's probe walks it.
"""
from .config import ChipConfig, Neighbour
from .device import Hfi1Device

__all__ = ["ChipConfig", "Hfi1Device", "Neighbour"]
