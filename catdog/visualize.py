"""Show what each layer sees: ``catdog-visualize [image=PATH] [ckpt=latest|pretrained|none|PATH]`` (``python
visualize.py`` in a checkout); with no ``image=``, the sample cat that comes with catdog (``image=sample:dog``: the
dog). Settings: catdog/conf/visualize.yaml. Writes the figures and the explorer page (index.html) of each image into
the run folder (outputs/visualize/<date>/<time>, or ``out_dir=``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from catdog import CatDogError
from catdog.atlas import explorer_atlas
from catdog.cli import image_setting, run
from catdog.model import pick_device
from catdog.preprocess import Preprocessing, image_paths
from catdog.projector import find_projector
from catdog.views.activations import (
    COMPARE_MAX,
    Figures,
    compare_pages,
    filters_page,
    parse_off,
    unique_dirs,
    visualize_image,
)
from catdog.views.attributions import methods_setting
from catdog.views.explorer import explorer_data, known_patterns, write_explorer
from catdog.views.plots import NORMS, save_png
from catdog.views.projector import load_projector
from catdog.weights import load_weights, weights_fingerprint


def visualize(cfg: DictConfig) -> None:
    """Record every conv and pool layer for each image, draw them and write the explorer page holding them all (or
    draw a layer's filter patterns, ``mode=filters``)."""
    out_dir = Path(cfg.out_dir)
    if cfg.mode not in ("activations", "filters"):
        raise CatDogError(f"mode must be activations or filters, got {cfg.mode!r}")
    if cfg.norm not in NORMS:
        raise CatDogError(f"norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.mode == "activations":  # check the images and settings before the (slower) model load
        paths = image_paths(image_setting(cfg.image))
    attribution = methods_setting(cfg.attribution)
    off = parse_off(OmegaConf.to_container(cfg.ablate) if OmegaConf.is_list(cfg.ablate) else cfg.ablate)
    weights = load_weights(cfg.ckpt)
    model = weights.model(pick_device(cfg.device))
    print(f"weights: {weights.source}")

    if cfg.mode == "filters":
        f = cfg.filters
        page = filters_page(model, cfg.layer, cfg.per_row, f.size, f.steps, f.step_size)
        print(f"wrote {save_png(page, out_dir / f'filters_{cfg.layer}.png')}")
        return

    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers
    figures = Figures(layers, cfg.per_row, cfg.norm, cfg.channel, cfg.gradcam, cfg.gradcam_layer, attribution, off)
    figures.check(model, weights.preprocessing.image_size)
    shown, pictures, failed = [], [], 0
    for path, sub in zip(paths, unique_dirs(paths), strict=True):
        target = out_dir if len(paths) == 1 else out_dir / sub
        try:
            manifest, pages, picture = visualize_image(model, path, target, weights, figures)
        except CatDogError as err:  # the settings were checked: this is a file that does not decode
            if len(paths) == 1:
                raise
            failed += 1
            print(f"skipped: {err}")  # one bad file in a folder does not stop the others
            continue
        p = manifest["prediction"]
        print(f"{p['label']} {p['probability']:.2f}" + (f"  {path}" if len(paths) > 1 else ""))
        if "ablation" in manifest:
            a = manifest["ablation"]
            names = ", ".join(f"{layer}:{c}" for layer, cs in a["off"].items() for c in cs)
            print(f"with {names} off: p(dog) {a['p_dog_before']:.4g} -> {a['p_dog_after']:.4g} ({a['label_after']})")
        if "ig" in manifest.get("attributions", {}):
            ig = manifest["attributions"]["ig"]
            print(f"integrated gradients: {ig['steps']} steps, sum off by {abs(ig['error']):.2%} of the logit's change")
        if len(paths) > 1 and len(shown) < COMPARE_MAX:  # keep only what the compare pages show: bounded memory
            shown.append((manifest, pages))
        if cfg.explorer:
            pictures.append(picture)  # its network input: 67 KB at 150 x 150
    if shown:
        compare_pages(shown, out_dir)
    if pictures:
        title = pictures[0].name if len(pictures) == 1 else f"{len(pictures)} pictures"
        atlas = None if str(cfg.atlas) == "none" else explorer_atlas(model, weights.preprocessing, cfg.ckpt, cfg.atlas)
        projector = places_in_map(model, weights.preprocessing, str(cfg.ckpt), paths, out_dir)
        data = explorer_data(model, weights.preprocessing, title, weights.source, pictures, cfg.gradcam_layer,
                             atlas=atlas, off=off, projector=projector, **known_patterns(model))  # fmt: skip
        print(f"wrote {write_explorer(out_dir / 'index.html', data)}")
    print(f"wrote {out_dir}" + (f" ({failed} of {len(paths)} images skipped)" if failed else ""))


def places_in_map(model: nn.Module, preprocessing: Preprocessing, ckpt: str, paths: list[Path], out_dir: Path):
    """Where a projector of these weights is at hand (``python -m catdog.projector``) and holds some of ``paths``: its
    page, relative to ``out_dir``, and {picture name: its path in the map's data folder}, for the explorer's link to
    each picture's place in the map; else None."""
    found = find_projector(ckpt, weights_fingerprint(model, preprocessing.to_dict()))
    if found is None:
        return None
    record = load_projector(found)
    folder, held = Path(record["data"]).resolve(), {point["path"] for point in record["points"]}
    points = {}
    for path in paths:
        try:
            inside = path.resolve().relative_to(folder).as_posix()
        except ValueError:
            continue
        if inside in held:
            points[path.name] = inside
    href = Path(os.path.relpath(found.with_name("projector.html"), out_dir.resolve())).as_posix()
    return {"href": href, "points": points} if points else None


def main(argv: list[str] | None = None) -> int:
    """``catdog-visualize``: the command line (default ``sys.argv[1:]``); returns the exit code."""
    return run("visualize", visualize, argv)


if __name__ == "__main__":
    sys.exit(main())
