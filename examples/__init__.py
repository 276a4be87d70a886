"""Example pipeline files, installed with the package (``shmpipe_examples``) so ``shmpipe demo``
finds ``pipeline.toml`` outside a checkout too."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def path(name: str = "pipeline.toml") -> Path:
    return HERE / name
