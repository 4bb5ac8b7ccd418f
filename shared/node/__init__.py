"""A node: its launcher, `conclave up`, the leaf link and the console."""
