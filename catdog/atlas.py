"""``python -m catdog.atlas``: what excites every channel across a dataset; see ``catdog.views.atlas`` and
conf/atlas.yaml. Writes ``atlas.json`` and ``atlas.html``; ``visualize.py`` finds the atlas of its checkpoint
(beside the checkpoint's run, or under outputs/atlas/) and shows each channel's crops in its explorer pages.
It also computes every conv channel's filter pattern into the atlas and the cache (``~/.cache/catdog``), where
the pages find them; ``patterns=only`` does just that, in seconds, with no pass over the data."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from catdog.cli import check_overrides, user_errors

ATLAS_FOLDER = Path("outputs") / "atlas"


class Pixels:
    """``PIL image -> (H, W, 3) uint8 tensor``, resized as the weights' preprocessing does: what the loader
    workers hand over (a quarter of the bytes of floats), scaled to [0, 1] a batch at a time where the model runs,
    and kept as is for the crops. Picklable, for the workers."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        self.size, self.interpolation = tuple(size), interpolation

    def __call__(self, img) -> torch.Tensor:
        import numpy as np

        from catdog.preprocess import resize

        return torch.from_numpy(np.array(resize(img, self.size, self.interpolation), dtype=np.uint8))


class IndexedImages(Dataset):
    """A ``CatDogImageFolder`` whose items also carry their index, so a batch knows its files; a file that fails
    to decode is ``None`` (and warned about), as in evaluate."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        item = self.folder[index]
        return None if item is None else (item[0], item[1], index)


def collate_indexed(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """The good samples stacked, their labels and indices, and how many were bad."""
    good = [s for s in samples if s is not None]
    if not good:
        return torch.empty(0), torch.empty(0), [], len(samples)
    x = torch.stack([s[0] for s in good])
    y = torch.stack([s[1] for s in good]).reshape(-1)
    return x, y, [s[2] for s in good], len(samples) - len(good)


def run_folder(spec: str) -> Path | None:
    """The train.py run a ``ckpt=`` setting points into (``<run>/checkpoints/*.ckpt``), or None."""
    from catdog.weights import newest

    if spec in ("none", "pretrained"):
        return None
    path = newest("checkpoints/best-*.ckpt") if spec == "latest" else Path(spec).expanduser()
    return path.parent.parent if path is not None and path.parent.name == "checkpoints" else None


def default_out_dir(spec: str, fingerprint: str) -> Path:
    run = run_folder(spec)
    return run / "atlas" if run is not None else ATLAS_FOLDER / fingerprint[:16]


def find_atlas(spec: str, fingerprint: str) -> Path | None:
    """An atlas of these weights and preprocessing at hand: beside the checkpoint's run, else under outputs/atlas/."""
    import json

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
    from catdog.views.atlas import load_atlas

    fp = weights_fingerprint(model, preprocessing.to_dict())
    if atlas == "auto":
        found = find_atlas(ckpt, fp)
        if found is None:
            return None
        print(f"atlas: {found}")
        return load_atlas(found, expected=fp)
    return load_atlas(atlas, expected=fp)


def weights_fingerprint(model: torch.nn.Module, preprocessing: dict | None) -> str:
    from catdog.views.atlas import fingerprint
    from catdog.views.explorer import state_sha256

    return fingerprint(state_sha256(model), preprocessing)


def cache_patterns(model: torch.nn.Module, layers, input_size: tuple[int, int]) -> Path:
    """``patterns=only``: every conv channel's filter pattern into the cache, where visualize.py's pages find them;
    no pass over the data."""
    from catdog import CatDogError
    from catdog.hooks import ActivationRecorder
    from catdog.views.explorer import attach_patterns, cache_dir
    from catdog.views.receptive import receptive_fields

    layers = OmegaConf.to_container(layers) if OmegaConf.is_list(layers) else layers
    try:
        convs = ActivationRecorder(model, layers, types=(torch.nn.Conv2d,)).names
    except KeyError as err:
        raise CatDogError(f"layers: {err.args[0]}") from err
    fields = receptive_fields(model)
    entries = {name: {"type": "conv", "field": fields[name].to_dict()} for name in convs}
    start = time.perf_counter()
    attach_patterns(model, entries, input_size)
    folder = cache_dir() / "patterns"
    print(f"filter patterns of {len(entries)} conv layers in {time.perf_counter() - start:.1f} s, cached in {folder}")
    return folder


@hydra.main(version_base="1.3", config_path="../conf", config_name="atlas")
@user_errors
def main(cfg: DictConfig) -> Path:
    from torch.utils.data import DataLoader

    from catdog import CatDogError
    from catdog.data import default_workers, image_folder
    from catdog.model import pick_device
    from catdog.preprocess import scaled
    from catdog.views.atlas import AtlasBuilder, write_atlas
    from catdog.weights import load_weights

    if cfg.k < 1:
        raise CatDogError(f"k must be at least 1, got {cfg.k}")
    if cfg.batch_size < 1:
        raise CatDogError(f"batch_size must be at least 1, got {cfg.batch_size}")
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
    # channels-last convolutions and pools run about twice as fast on a CPU; the weights' values are unchanged
    model = model.to(memory_format=torch.channels_last)
    if patterns == "only":
        return cache_patterns(model, cfg.layers, preprocessing.image_size)
    folder_path = Path(cfg.data.root) / cfg.split
    pixels = Pixels(preprocessing.image_size, preprocessing.interpolation)
    folder = image_folder(folder_path, pixels, preprocessing.exif_transpose)
    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers
    try:
        builder = AtlasBuilder(model, layers, cfg.k)
    except KeyError as err:
        raise CatDogError(f"layers: {err.args[0]}") from err
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(str(cfg.ckpt), fp)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    loader = DataLoader(
        IndexedImages(folder),
        batch_size=cfg.batch_size,
        num_workers=workers,
        collate_fn=collate_indexed,
        pin_memory=device.type == "cuda",
    )
    start, bad, clock = time.perf_counter(), 0, {}
    batches = iter(loader)
    while True:
        mark = time.perf_counter()
        try:
            batch, y, indices, n_bad = next(batches)
        except StopIteration:
            break
        clock["decode wait"] = clock.get("decode wait", 0.0) + time.perf_counter() - mark
        bad += n_bad
        if indices:
            files = [str(Path(folder.samples[i][0]).relative_to(folder_path)) for i in indices]
            builder.update(scaled(batch, device), y, files, batch.numpy())
    clock.update(builder.seconds)
    mark = time.perf_counter()
    atlas = builder.result(str(folder_path), weights.source, fp, preprocessing.to_dict())
    clock["sprites"] = time.perf_counter() - mark
    if patterns == "true":
        from catdog.views.explorer import attach_patterns

        mark = time.perf_counter()
        attach_patterns(model, atlas["layers"], preprocessing.image_size)
        clock["filter patterns"] = time.perf_counter() - mark
    mark = time.perf_counter()
    json_path, html_path = write_atlas(out_dir, atlas)
    clock["writing"] = time.perf_counter() - mark
    skipped = f" ({bad} unreadable files skipped)" if bad else ""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in clock.items())
    print(f"{atlas['images']} images in {time.perf_counter() - start:.1f} s{skipped} ({parts}; {threads} threads)")
    print(f"wrote {html_path} and {json_path}")
    return out_dir


if __name__ == "__main__":
    check_overrides("atlas")
    main()
