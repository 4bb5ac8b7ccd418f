"""Wheels of this checkout for the tests that install one (see `shared.soak.wheel`)."""

from __future__ import annotations

from shared.soak.wheel import ROOT, build_wheel, set_version

__all__ = ["ROOT", "build_wheel", "set_version"]
