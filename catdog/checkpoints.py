"""Finding the checkpoints that train.py wrote."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

RUN_FOLDERS = ("outputs", "multirun")


def newest(pattern: str, search: Iterable[str] = RUN_FOLDERS) -> Path | None:
    """The most recently written file matching ``pattern`` (e.g. ``checkpoints/last.ckpt``) under ``search``."""
    found = [p for folder in search for p in Path(folder).glob(f"**/{pattern}")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
