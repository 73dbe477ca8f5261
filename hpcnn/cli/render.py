"""hpcnn render."""

from __future__ import annotations

COMMANDS: list = []
