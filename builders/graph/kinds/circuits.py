"""Stage kinds: circuits."""
from __future__ import annotations

KINDS: list = []
