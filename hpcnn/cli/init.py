"""hpcnn init."""

from __future__ import annotations

COMMANDS: list = []
