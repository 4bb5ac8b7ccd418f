"""Quorum leases: pure decisions, the holder, watching, auditing, and fencing."""
