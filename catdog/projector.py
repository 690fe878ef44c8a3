"""``python -m catdog.projector``: a map of every image of a folder, as the network sees them.

    python -m catdog.projector [ckpt=latest] [data.root=data/processed_data] [split=test] [layer=fc1]
                               [method=tsne|umap] [out_dir=...] [explorer=...] [key=value ...]

Settings: catdog/conf/projector.yaml. Every image of ``data.root/<split>/{cats,dogs}`` is embedded at ``layer``
(fc1's 512 values by default; a conv or pool layer's channel means), the vectors are laid out in 2-D
(``catdog.views.projector``) and ``projector.json`` and ``projector.html`` are written: thumbnails at their places,
coloured by class or by prediction, the misclassified marked, p(dog) on hover, a click opens the image in the
explorer. Prints how well the map keeps each image's neighbours. Files that do not decode are skipped and counted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from catdog import CatDogError
from catdog.allocator import reuse_freed_memory
from catdog.cli import run
from catdog.fast import recordable
from catdog.model import pick_device
from catdog.preprocess import collate_readable, default_workers, scaled
from catdog.views.explorer import explorer_data, known_patterns, write_explorer
from catdog.views.projector import (
    METHODS,
    Embedder,
    layout_2d,
    load_projector,
    projector_record,
    require_library,
    thumbnails,
    write_projector,
)
from catdog.weights import load_weights, run_folder, weights_fingerprint

PROJECTOR_FOLDER = Path("outputs") / "projector"


def default_out_dir(spec: str, fingerprint: str) -> Path:
    """``<run>/projector`` beside a train.py checkpoint's run, else ``outputs/projector/<fingerprint>``."""
    run = run_folder(spec)
    return run / "projector" if run is not None else PROJECTOR_FOLDER / fingerprint[:16]


def find_projector(spec: str, fingerprint: str) -> Path | None:
    """A projector of these weights and preprocessing at hand (beside the checkpoint's run, else under
    outputs/projector/), for the explorer's link to an image's place in the map; None if there is none."""
    candidates = [
        default_out_dir(spec, fingerprint) / "projector.json",
        *sorted(PROJECTOR_FOLDER.glob("*/projector.json")),
    ]
    for path in candidates:
        try:
            load_projector(path, expected=fingerprint)
            return path
        except CatDogError:
            continue
    return None


def check_settings(cfg: DictConfig) -> None:
    """Every setting the command reads, checked before anything is loaded; one line for the first bad one."""
    if cfg.method not in METHODS:
        raise CatDogError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    require_library(cfg.method)
    if not isinstance(cfg.thumb, int) or not 8 <= cfg.thumb <= 128:
        raise CatDogError(f"thumb must be a whole number of pixels from 8 to 128, got {cfg.thumb!r}")
    if not isinstance(cfg.data.batch_size, int) or cfg.data.batch_size < 1:
        raise CatDogError(f"data.batch_size must be a whole number of at least 1, got {cfg.data.batch_size!r}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise CatDogError(f"threads must be a whole number of at least 1, got {cfg.threads!r}")
    if cfg.metric not in ("cosine", "euclidean"):
        raise CatDogError(f"metric must be cosine or euclidean, got {cfg.metric!r}")


def project(cfg: DictConfig) -> dict:
    """Embed, lay out, measure and write; returns the record written to ``projector.json`` (with ``out_dir`` and
    the seconds each stage took)."""
    # catdog.data imports Lightning, twice torch's import time (python -X importtime): only where it is used
    from catdog.data import image_folder

    start = time.perf_counter()
    check_settings(cfg)
    # as train.py: freed activations are kept for the next batch instead of unmapped and faulted in again (set
    # before the loader workers fork); the same results, in noticeably less time on a CPU
    reuse_freed_memory()
    try:
        device = pick_device(str(cfg.device))
    except ValueError as err:
        raise CatDogError(str(err)) from err
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    weights = load_weights(str(cfg.ckpt))
    model = weights.model(device)
    preprocessing = weights.preprocessing
    fp = weights_fingerprint(model, preprocessing.to_dict())  # as the atlas's: which weights, seen how
    # the layers as hooks see them on the plain model, with catdog.fast's index-free pools and channels_last: the
    # same values, faster; a layer that does not exist fails here, before any file is read
    embedder = Embedder(recordable(model), str(cfg.layer))
    print(f"weights: {weights.source}")
    folder = Path(cfg.data.root) / str(cfg.split)
    listing = image_folder(folder, preprocessing)  # uint8 pictures: a quarter of the bytes of floats
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(str(cfg.ckpt), fp)

    clock = {"weights": time.perf_counter() - start}
    mark = time.perf_counter()
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loader = DataLoader(
        listing,
        batch_size=cfg.data.batch_size,
        num_workers=workers,
        collate_fn=collate_readable,
        pin_memory=device.type == "cuda",
    )
    features, logits, thumbs, kept, bad = [], [], [], [], []
    for pixels, indices, unreadable in loader:  # a file that does not decode is warned about and left out
        bad += [u.index for u in unreadable]
        if indices:
            f, logit = embedder(scaled(pixels, device).contiguous(memory_format=torch.channels_last))
            features.append(f.numpy())
            logits.append(logit.numpy())
            thumbs.append(thumbnails(pixels, cfg.thumb))
            kept += indices
    if not kept:
        raise CatDogError(f"no readable images under {folder} ({len(bad)} files could not be read)")
    clock["decode + forward"] = time.perf_counter() - mark
    features_, logits_, thumbs_ = np.concatenate(features), np.concatenate(logits), np.concatenate(thumbs)
    labels = np.array([listing.targets[i] for i in kept])
    files = [Path(listing.paths[i]).relative_to(folder).as_posix() for i in kept]

    mark = time.perf_counter()
    positions, layout = layout_2d(
        features_, str(cfg.method), cfg.seed, cfg.metric, cfg.perplexity, cfg.n_neighbors, cfg.min_dist, threads
    )
    clock[f"layout ({layout['method']})"] = time.perf_counter() - mark
    mark = time.perf_counter()
    record = projector_record(
        files, labels, logits_, features_, positions, layout,
        layer=str(cfg.layer), data=str(folder), source=weights.source, fingerprint=fp,
        preprocessing=preprocessing.to_dict(), metric=cfg.metric,
        unreadable=[Path(listing.paths[i]).relative_to(folder).as_posix() for i in bad],
    )  # fmt: skip
    clock["figures"] = time.perf_counter() - mark
    mark = time.perf_counter()
    json_path, html_path = write_projector(out_dir, record, thumbs_, cfg.explorer)
    if str(cfg.explorer).startswith("explorer.html"):  # the default link: the explorer of these weights, beside it
        page = explorer_data(model, preprocessing, "catdog explorer", weights.source, **known_patterns(model))
        write_explorer(out_dir / "explorer.html", page)
    clock["page"] = time.perf_counter() - mark
    clock["total"] = time.perf_counter() - start
    return {**record, "out_dir": str(out_dir), "seconds": clock, "threads": threads, "html": str(html_path),
            "json": str(json_path)}  # fmt: skip


def report(result: dict) -> str:
    """What the command prints: counts and time, the two figures, the files written."""
    clock = result["seconds"]
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in clock.items() if name != "total")
    bad = len(result["unreadable"])
    skipped = f" ({bad} unreadable file{'s' if bad > 1 else ''} skipped)" if bad else ""
    f, layer = result["figures"], result["layer"]
    lines = [
        f"{result['images']} images of {result['data']}{skipped} at {layer} ({result['dims']} values each) "
        f"in {clock['total']:.1f} s ({parts}; {result['threads']} threads)",
    ]
    if f["neighbours_kept"] is None:
        lines.append("neighbour figures: none (a single image has no neighbours)")
    else:
        lines += [
            f"neighbours kept: {f['neighbours_kept']:.3f} (share of each image's {f['k']} nearest in the map that are "
            f"among its {f['k_full']} nearest at {layer}, {f['metric']} distance; averaged)",
            f"class agreement of the {f['k']} nearest: {f['class_agreement_map']:.3f} in the map, "
            f"{f['class_agreement_full']:.3f} at {layer}",
        ]
    size = Path(result["html"]).stat().st_size / 1e6
    lines.append(f"wrote {result['html']} ({size:.1f} MB) and {result['json']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run("projector", lambda cfg: print(report(project(cfg))), argv)


if __name__ == "__main__":
    sys.exit(main())
