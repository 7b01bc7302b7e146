"""vfnic host side: the vfio-user transport, the PCI function layer, DMA, IRQs, the CLI."""
