"""``shmpipe replay``: registered from ``shmpipe_tools.capture``, which shares the option handling."""
from __future__ import annotations

from .capture import add_replay_parser as add_parser

__all__ = ["add_parser"]
