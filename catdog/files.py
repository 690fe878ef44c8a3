"""Atomic file writes: a temporary file in the same folder, renamed into place. A run killed mid-write never
leaves a truncated file under the final name (the previous version, if any, stays whole). And the order of
numbered names."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary path)``, then rename the temporary file to ``path``. The file gets the permissions
    that ``open`` would give a new file (0666 less the umask), not ``mkstemp``'s owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after writing: a writer may replace the file (safetensors does)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key putting numbered names in numeric order: ``2 < 10``, ``job2 < job10`` (a sweep's job folders, the
    variables ``0, 1, ..., 10`` of a Keras layer). Digits and text alternate, so equal positions compare alike."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))
