"""The lab: provisioned guests at work. A `vfnic serve` process (`server`),
guests on QEMU driven through their agent (`vm`), two guests on a two-HFI
fabric (`fabric`) and the upper-layer protocols between them (`ulp`), long
runs (`soak`), `lspci` as data (`lspci`), child processes (`process`) and
deadlines (`wait`)."""
