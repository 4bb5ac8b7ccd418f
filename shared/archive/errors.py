"""Typed archive errors: the one vocabulary every store and operation raises."""

from __future__ import annotations


class ArchiveError(Exception):
    """Any failure of the archive; the message names the key at fault."""


class ArchiveUnavailable(ArchiveError):
    """The store could not be reached or answered 5xx/timeout: retry later."""


class ArchiveNotFound(ArchiveError):
    """No object under that key."""


class CorruptArchive(ArchiveError):
    """An object's bytes do not match the checksum or format recorded for them."""
