"""Deterministic simulation: the real services on an in-memory bus under a virtual clock."""
