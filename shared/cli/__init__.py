"""The `conclave` command line: one module per command group."""
