"""hpcnn doctor."""

from __future__ import annotations

COMMANDS: list = []
