"""Identities, permissions and TLS files."""
