"""The PCI function layer: config space from capability objects, BARs, MSI-X, FLR."""
