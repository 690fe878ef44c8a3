"""``catdog-atlas`` (``python -m catdog.atlas``): what excites every channel across a dataset; see
``catdog.views.channel_atlas`` and catdog/conf/atlas.yaml. Writes ``atlas.json`` and ``atlas.html``; visualize finds
the atlas of its checkpoint (beside the checkpoint's run, or under outputs/atlas/) and shows each channel's crops in
its explorer pages.
It also computes every conv channel's feature visualisation (``catdog.views.filters``) into the atlas and the cache
(``~/.cache/catdog``), where the explorer pages find them; ``patterns=only`` does just that, with no pass over the
data."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from catdog import CatDogError
from catdog.cli import run
from catdog.fast import recordable
from catdog.hooks import ActivationRecorder
from catdog.model import pick_device
from catdog.preprocess import collate_readable, default_workers, scaled
from catdog.projector import find_projector
from catdog.views.channel_atlas import AtlasBuilder, load_atlas, write_atlas
from catdog.views.explorer import explorer_data, known_patterns, pattern_sprites, write_explorer
from catdog.views.filters import CLASS_LAYER, cache_dir, cached_patterns
from catdog.weights import load_weights, run_folder, weights_fingerprint, weights_sha256

ATLAS_FOLDER = Path("outputs") / "atlas"


def default_out_dir(spec: str, fingerprint: str) -> Path:
    run = run_folder(spec)
    return run / "atlas" if run is not None else ATLAS_FOLDER / fingerprint[:16]


def find_atlas(spec: str, fingerprint: str) -> Path | None:
    """An atlas of these weights and preprocessing at hand: beside the checkpoint's run, else under outputs/atlas/."""
    candidates = [default_out_dir(spec, fingerprint) / "atlas.json", *sorted(ATLAS_FOLDER.glob("*/atlas.json"))]
    for path in candidates:
        try:
            with open(path) as f:
                head = f.read(400)  # the fingerprint is written near the start
            if fingerprint in head or json.loads(path.read_text()).get("fingerprint") == fingerprint:
                return path
        except (OSError, ValueError):
            continue
    return None


def explorer_atlas(model: torch.nn.Module, preprocessing, ckpt: str, atlas: str = "auto") -> dict | None:
    """The atlas for visualize.py's explorer pages: ``auto``, the one of these weights at hand (or None); a path,
    which must be an atlas of these weights and preprocessing (refused in one line otherwise)."""
    fp = weights_fingerprint(model, preprocessing.to_dict())
    if atlas == "auto":
        found = find_atlas(ckpt, fp)
        if found is None:
            return None
        print(f"atlas: {found}")
        return load_atlas(found, expected=fp)
    return load_atlas(atlas, expected=fp)


def feature_patterns(model: torch.nn.Module, layers) -> dict:
    """The feature visualisations of the conv layers ``layers`` selects (all by default), from the shipped file or
    the cache, else computed and cached (``catdog.views.filters``)."""
    try:
        convs = ActivationRecorder(model, layers, types=(torch.nn.Conv2d,)).names
    except KeyError as err:
        raise CatDogError(f"layers: {err.args[0]}") from err
    sha = weights_sha256(model.state_dict())
    return {name: cached_patterns(model, name, sha) for name in convs}


def cache_patterns(model: torch.nn.Module, layers) -> Path:
    """``patterns=only``: the conv channels' and the classes' feature visualisations into the cache, where the
    explorer pages find them; no pass over the data."""
    start = time.perf_counter()
    found = feature_patterns(model, layers)
    cached_patterns(model, CLASS_LAYER)
    channels = sum(len(p) for p in found.values())
    seconds = time.perf_counter() - start
    print(f"feature visualisations of {channels} channels in {len(found)} conv layers and of the 2 classes in "
          f"{seconds:.1f} s, cached in {cache_dir()}")  # fmt: skip
    return cache_dir()


def atlas(cfg: DictConfig) -> Path:
    """The command: one pass over ``data.root/<split>``, then ``atlas.json`` and ``atlas.html`` in the out folder
    (``patterns=only``: the filter patterns alone, into the cache)."""
    # catdog.data imports Lightning, which takes about twice as long to import as torch itself (python -X
    # importtime); imported here, visualize (which imports this module) does not wait for it
    from catdog.data import image_folder

    if not isinstance(cfg.k, int) or cfg.k < 1:
        raise CatDogError(f"k must be a whole number of at least 1, got {cfg.k!r}")
    if not isinstance(cfg.data.batch_size, int) or cfg.data.batch_size < 1:
        raise CatDogError(f"data.batch_size must be a whole number of at least 1, got {cfg.data.batch_size!r}")
    patterns = str(cfg.patterns).lower()
    if patterns not in ("true", "false", "only"):
        raise CatDogError(f"patterns must be true, false or only, got {cfg.patterns!r}")
    threads = torch.get_num_threads() if cfg.threads is None else cfg.threads
    if not isinstance(threads, int) or threads < 1:
        raise CatDogError(f"threads must be a whole number of at least 1, got {cfg.threads!r}")
    try:
        device = pick_device(str(cfg.device))
    except ValueError as err:
        raise CatDogError(str(err)) from err
    torch.set_num_threads(threads)
    weights = load_weights(str(cfg.ckpt))
    model = weights.model(device)
    preprocessing = weights.preprocessing
    print(f"weights: {weights.source}")
    fp = weights_fingerprint(model, preprocessing.to_dict())
    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers
    if patterns == "only":
        return cache_patterns(model, layers)
    folder_path = Path(cfg.data.root) / cfg.split
    folder = image_folder(folder_path, preprocessing)  # uint8 pictures: a quarter of the bytes of floats
    labels = torch.tensor(folder.targets)
    try:
        # the network's layers as hooks see them on the plain model, with catdog.fast's index-free pools and
        # channels_last: the same values, about twice as fast
        builder = AtlasBuilder(recordable(model), layers, cfg.k)
    except KeyError as err:
        raise CatDogError(f"layers: {err.args[0]}") from err
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(str(cfg.ckpt), fp)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loader = DataLoader(
        folder,
        batch_size=cfg.data.batch_size,
        num_workers=workers,
        collate_fn=collate_readable,
        pin_memory=device.type == "cuda",
    )
    start, bad, clock = time.perf_counter(), 0, {}
    batches = iter(loader)
    while True:
        mark = time.perf_counter()
        try:
            batch, indices, unreadable = next(batches)
        except StopIteration:
            break
        clock["decode wait"] = clock.get("decode wait", 0.0) + time.perf_counter() - mark
        bad += len(unreadable)
        if indices:
            files = [str(Path(folder.paths[i]).relative_to(folder_path)) for i in indices]
            builder.update(scaled(batch, device), labels[indices], files, batch.numpy())
    clock.update(builder.seconds)
    mark = time.perf_counter()
    atlas = builder.result(str(folder_path), weights.source, fp, preprocessing.to_dict())
    clock["sprites"] = time.perf_counter() - mark
    if patterns == "true":
        mark = time.perf_counter()
        convs = [name for name in ActivationRecorder(model, types=(torch.nn.Conv2d,)).names if name in atlas["layers"]]
        for name, sprite in pattern_sprites(feature_patterns(model, convs)).items():
            atlas["layers"][name]["patterns"] = sprite
        clock["feature visualisations"] = time.perf_counter() - mark
    mark = time.perf_counter()
    # a crop links to its picture in the explorer of these weights, beside the atlas (it opens the picture once
    # the user opens the data folder there: a page from disk cannot read the user's files by itself)
    links = {"explorer": "explorer.html"}
    projector = find_projector(str(cfg.ckpt), fp)
    if projector is not None:  # a crop opens its place in the map of these weights
        links["projector"] = Path(os.path.relpath(projector.with_name("projector.html"), out_dir.resolve())).as_posix()
    json_path, html_path = write_atlas(out_dir, atlas, links=links)
    explorer = explorer_data(model, preprocessing, "catdog explorer", weights.source, **known_patterns(model))
    write_explorer(out_dir / "explorer.html", explorer)
    clock["writing"] = time.perf_counter() - mark
    skipped = f" ({bad} unreadable files skipped)" if bad else ""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in clock.items())
    print(f"{atlas['images']} images in {time.perf_counter() - start:.1f} s{skipped} ({parts}; {threads} threads)")
    print(f"wrote {html_path}, {json_path} and {out_dir / 'explorer.html'}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``catdog-atlas``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("atlas", atlas, argv)


if __name__ == "__main__":
    sys.exit(main())
