"""Wire formats shared by device models: OPA packets, MADs (later: UET)."""
