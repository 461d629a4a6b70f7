"""The store's one exception type: its message is one line meant for the user."""
from __future__ import annotations


class StoreError(Exception):
    """A store problem with a one-line message meant for the user."""
