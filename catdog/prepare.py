"""Turn a cats-vs-dogs download into ``{root}/{train,test}/{cats,dogs}``, as the seed had it.

Sources: Kaggle's ``train.zip`` or ``dogs-vs-cats.zip`` (``train.zip`` inside), the extracted Kaggle folder
(``cat.N.jpg``, ``dog.N.jpg``), Microsoft's ``kagglecatsanddogs_5340.zip`` or its ``PetImages/{Cat,Dog}`` folder,
an http(s) URL (downloaded once, then treated as a zip), or a name in ``SOURCES``: ``microsoft``, the default, is
Microsoft's download of the whole set (786 MB). A file's class comes from its parent folder
(``Cat``, ``cats``, ...) or, failing that, from its name (``cat.12.jpg``).

Every image is decoded once; files that do not decode are skipped and listed in ``prepare_report.txt``.
The source is never modified, and the split is built in a temporary folder that is renamed into place only
when complete, so an interrupted run leaves nothing half-written.

    catdog-prepare [data.source=microsoft|/path/to/train.zip] [data.root=data/processed_data]
                   [data.test_fraction=0.2] [data.split_seed=0]

(or ``python -m catdog.prepare``; train does it itself when ``data.root`` is missing). Settings:
catdog/conf/prepare.yaml.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

from catdog import CLASSES, CatDogError
from catdog.cli import run
from catdog.preprocess import IMAGE_EXTENSIONS

MICROSOFT_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)
SOURCES = {"microsoft": MICROSOFT_URL}  # names a source can be given by: data.source=microsoft is the default
_FOLDER_LABELS = {"cat": "cats", "cats": "cats", "dog": "dogs", "dogs": "dogs"}


@dataclass
class Entry:
    """One candidate image in the source: its name there, its class, and how to read its bytes."""

    name: str
    label: str
    read: Callable[[], bytes]
    path: Path | None = None  # set for files in a folder, so they can be hard-linked


def label_of(name: str) -> str | None:
    """``PetImages/Cat/1.jpg`` -> cats; ``train/dog.7.jpg`` -> dogs; anything else -> None."""
    path = PurePosixPath(name)
    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None  # .DS_Store, Thumbs.db, hidden files, non-images by name
    if path.parent.name.lower() in _FOLDER_LABELS:
        return _FOLDER_LABELS[path.parent.name.lower()]
    return _FOLDER_LABELS.get(path.name.split(".")[0].lower())


def _zip_entries(archive: zipfile.ZipFile, prefix: str = "") -> Iterator[Entry]:
    for info in archive.infolist():
        if info.is_dir():
            continue
        if PurePosixPath(info.filename).name.lower() == "train.zip":  # Kaggle's dogs-vs-cats.zip nests it
            inner = zipfile.ZipFile(io.BytesIO(archive.read(info)))
            yield from _zip_entries(inner, prefix + info.filename + "!")
            continue
        label = label_of(info.filename)
        if label:
            yield Entry(prefix + info.filename, label, lambda info=info: archive.read(info))


def _folder_entries(folder: Path) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not follow symlinked folders: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            label = label_of(path.relative_to(folder).as_posix())
            if label and path.is_file():
                yield Entry(path.relative_to(folder).as_posix(), label, path.read_bytes, path)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` once: a ``.part`` file, checked (length, SHA-256), then renamed into place. A failed
    or interrupted download leaves nothing behind: no ``.part`` file, no folder made for it."""
    if dest.exists():
        return dest
    made = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except OSError as err:  # urllib's URLError and HTTPError, timeouts, resets, a full disk: all OSErrors
            raise CatDogError(
                f"cannot download {url}: {_reason(err)}; check the connection, or download the file yourself "
                "and give data.source=PATH"
            ) from err
        size = part.stat().st_size
        if total is not None and size != total:
            raise CatDogError(f"download of {url} is incomplete ({size} of {total} bytes); run again to retry")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise CatDogError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}")
    except BaseException:  # also Ctrl-C: no partial file stays behind
        part.unlink(missing_ok=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: another process put something there meanwhile
                break
        raise
    os.replace(part, dest)
    print(f"Downloaded {dest} ({size:,} bytes, SHA-256 {digest.hexdigest()})")
    return dest


def _reason(err: OSError) -> str:
    """Why a download failed, in a few words: ``HTTP 404 Not Found``, ``[Errno 111] Connection refused``, ..."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err)


def decodes(data: bytes) -> str | None:
    """None if ``data`` is a complete image PIL can decode, else the reason it is not."""
    if not data:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except Image.DecompressionBombError as err:  # also raised for the warning, turned into an error above
        return f"refused, too many pixels ({err})"
    except Image.DecompressionBombWarning as err:
        return f"refused, too many pixels ({err})"
    except Exception as err:  # PIL raises many types for broken files
        return f"{type(err).__name__}: {err}"
    return None


def split(entries: list[Entry], test_fraction: float, seed: int) -> dict[str, list[Entry]]:
    """Stratified, deterministic: per class, names sorted then shuffled with ``seed``; the first part is test."""
    out: dict[str, list[Entry]] = {"train": [], "test": []}
    for label in CLASSES:
        members = sorted((e for e in entries if e.label == label), key=_target_name)
        random.Random(f"{seed}-{label}").shuffle(members)
        n_test = round(len(members) * test_fraction)
        out["test"] += members[:n_test]
        out["train"] += members[n_test:]
    return out


def _target_name(entry: Entry) -> str:
    """The file name in the class folder: ``cat.12.jpg`` stays, ``PetImages/Cat/12.jpg`` becomes ``cat.12.jpg``."""
    name = PurePosixPath(entry.name.split("!")[-1]).name
    prefix = entry.label[:-1] + "."
    return name if name.lower().startswith(prefix) else prefix + name


@contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing, left in place) for the block: a second
    process preparing the same ``what`` (two terminals, a sweep's parallel jobs) waits here for the first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a")
    except OSError:  # a read-only folder: nobody prepares anything there
        yield
        return
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process preparing {what} (lock file {path})", flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def prepare(
    source: str | os.PathLike = "microsoft",
    root: str | os.PathLike = "data/processed_data",
    test_fraction: float = 0.2,
    seed: int = 0,
    sha256: str | None = None,
    download_dir: str | os.PathLike = "data/downloads",
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build ``root/{train,test}/{cats,dogs}`` from ``source``; returns ``root``. Does nothing if ``root`` exists.
    A second process preparing the same ``root`` meanwhile waits on the lock file ``.<root name>.lock`` beside it."""
    root = Path(root)
    if root.exists() and not force:
        print(f"{root} exists; nothing to do (force=true rebuilds it)")
        return root
    if not 0 < test_fraction < 1:
        raise CatDogError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with locked(root.parent / f".{root.name}.lock", str(root)):
        if root.exists() and not force:  # another process made it while this one waited for the lock
            print(f"{root} was prepared by another process; nothing to do")
            return root
        return _prepare(str(source), root, test_fraction, seed, sha256, download_dir, progress)


def _prepare(
    source: str, root: Path, test_fraction: float, seed: int, sha256: str | None, download_dir: str, progress: bool
) -> Path:
    url = SOURCES.get(source, source)  # a name (microsoft) stands for its URL
    if is_url(url):
        source = str(download(url, Path(download_dir) / Path(url.split("?")[0]).name, sha256, progress))
    path = Path(source).expanduser()
    if not path.exists():
        names = ", ".join(SOURCES)
        raise CatDogError(
            f"data source {source} does not exist; give a zip, a folder, a URL or {names} (data.source=...)"
        )
    if path.is_dir():
        entries = list(_folder_entries(path))
    else:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise CatDogError(f"data source {source} is not a readable zip file ({err})") from err
        entries = list(_zip_entries(archive))
    counts = {label: sum(e.label == label for e in entries) for label in CLASSES}
    if not all(counts.values()):
        raise CatDogError(
            f"data source {source} has {counts['cats']} cat and {counts['dogs']} dog images; need both "
            "(Kaggle's cat.N.jpg/dog.N.jpg or PetImages/Cat, PetImages/Dog)"
        )

    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        kept, skipped = _copy_decodable(entries, staging / "all", progress)
        for part, members in split(kept, test_fraction, seed).items():
            for label in CLASSES:
                (staging / part / label).mkdir(parents=True)
            for entry in members:
                name = _target_name(entry)
                os.replace(staging / "all" / entry.label / name, staging / part / entry.label / name)
        shutil.rmtree(staging / "all")
        (staging / "prepare_report.txt").write_text(
            f"source: {source}\nseed: {seed}\ntest_fraction: {test_fraction}\n"
            f"skipped {len(skipped)} file(s) that do not decode:\n" + "".join(f"{n}\t{why}\n" for n, why in skipped)
        )
        if root.exists():  # force=true: swap the old split out only now that the new one is complete
            old = root.with_name(f".{root.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root, old)
            os.replace(staging, root)
            shutil.rmtree(old)
        else:
            os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for part in ("train", "test"):
        n = sum(1 for label in CLASSES for _ in (root / part / label).iterdir())
        print(f"Found {n} images belonging to 2 classes. ({root / part})")
    if skipped:
        print(f"Skipped {len(skipped)} file(s) that do not decode; see {root / 'prepare_report.txt'}")
    return root


def _copy_decodable(entries: list[Entry], dest: Path, progress: bool) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Read and decode each entry once; write the good ones to ``dest/{label}/``; return (kept, skipped)."""
    kept, skipped = [], []
    for label in CLASSES:
        (dest / label).mkdir(parents=True)
    for entry in tqdm(entries, desc="prepare", unit="img", disable=not progress):
        parts = PurePosixPath(entry.name.replace("\\", "/")).parts
        if entry.name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            skipped.append((entry.name, "refused: an absolute path or one that escapes the folder (zip-slip)"))
            continue
        data = entry.read()
        reason = decodes(data)
        if reason:
            skipped.append((entry.name, reason))
            continue
        target = dest / entry.label / _target_name(entry)
        if target.exists():
            skipped.append((entry.name, f"duplicate of another source file named {target.name}"))
            continue
        try:
            if entry.path is None:
                raise OSError
            os.link(entry.path, target)  # no copy where the filesystem allows
        except OSError:
            target.write_bytes(data)
        kept.append(entry)
    return kept, skipped


def prepare_data(cfg: DictConfig) -> Path:
    """The command: ``data.source`` into ``data.root`` with ``data.test_fraction`` and ``data.split_seed``, the
    settings training reads."""
    data = cfg.data
    return prepare(
        data.source, data.root, data.test_fraction, data.split_seed, cfg.sha256, cfg.download_dir, cfg.force
    )


def main(argv: list[str] | None = None) -> int:
    """``catdog-prepare``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("prepare", prepare_data, argv)


if __name__ == "__main__":
    sys.exit(main())
