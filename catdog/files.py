"""Atomic file writes: a temporary file in the same folder, renamed into place. A run killed mid-write never
leaves a truncated file under the final name (the previous version, if any, stays whole). And the order of
numbered names."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from catdog import CatDogError


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


def read_record(path: str | os.PathLike, name: str, fmt: str, expected: str | None = None) -> dict:
    """Read ``<name>.json`` (``path`` or the folder holding it) that ``python -m catdog.<name>`` wrote: an atlas or a
    projector. ``fmt``: its format tag; ``expected``: the fingerprint of the weights and preprocessing in use, a
    record made for others being refused in one line (``CatDogError``), as every damaged or foreign file is."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CatDogError(f"{name} {path} not found; make one: python -m catdog.{name}") from err
    except (OSError, ValueError) as err:
        raise CatDogError(f"cannot read {name} {path}: not a {name}.json ({err})") from err
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format") if isinstance(record, dict) else None
        raise CatDogError(f"{path} is not a catdog {name} (format {found!r}, expected {fmt!r})")
    if expected is not None and record.get("fingerprint") != expected:
        raise CatDogError(
            f"{name} {path} was made for other weights or preprocessing ({record.get('source')}); "
            f"make one for this checkpoint with python -m catdog.{name} ckpt=..."
        )
    return record
