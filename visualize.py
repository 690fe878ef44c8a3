"""Show what each layer sees: ``python visualize.py image=PATH [ckpt=latest|pretrained|none|PATH]``; see
conf/visualize.yaml."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from catdog.cli import check_overrides, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@user_errors
def main(cfg: DictConfig) -> None:
    from catdog import CatDogError
    from catdog.model import pick_device
    from catdog.preprocess import image_paths
    from catdog.views.activations import COMPARE_MAX, Figures, compare_pages, filters_page, unique_dirs, visualize_image
    from catdog.views.plots import NORMS, save_png
    from catdog.weights import load_weights

    out_dir = Path(cfg.out_dir)
    if cfg.mode not in ("activations", "filters"):
        raise CatDogError(f"mode must be activations or filters, got {cfg.mode!r}")
    if cfg.norm not in NORMS:
        raise CatDogError(f"norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.mode == "activations":  # check the images before the (slower) model load
        paths = image_paths(OmegaConf.to_container(cfg.image) if OmegaConf.is_list(cfg.image) else str(cfg.image))
    weights = load_weights(cfg.ckpt)
    model = weights.model(pick_device(cfg.device))
    print(f"weights: {weights.source}")

    if cfg.mode == "filters":
        f = cfg.filters
        page = filters_page(model, cfg.layer, cfg.per_row, f.size, f.steps, f.step_size)
        print(f"wrote {save_png(page, out_dir / f'filters_{cfg.layer}.png')}")
        return

    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers
    atlas = None
    if cfg.explorer and str(cfg.atlas) != "none":
        from catdog.atlas import explorer_atlas

        atlas = explorer_atlas(model, weights.preprocessing, str(cfg.ckpt), str(cfg.atlas))
    gradcam_layer = cfg.gradcam_layer if cfg.gradcam else None
    figures = Figures(layers, cfg.per_row, cfg.norm, cfg.channel, gradcam_layer, cfg.explorer, atlas)
    shown, linked, failed = [], [], 0
    for path, sub in zip(paths, unique_dirs(paths), strict=True):
        target = out_dir if len(paths) == 1 else out_dir / sub
        try:
            manifest, pages = visualize_image(model, path, target, weights.preprocessing, figures, weights.source)
        except KeyError as err:  # an unknown layer name or glob
            raise CatDogError(f"layers: {err.args[0]}") from err
        except CatDogError as err:
            if len(paths) == 1:
                raise
            failed += 1
            print(f"skipped: {err}")  # one bad file in a folder does not stop the others
            continue
        p = manifest["prediction"]
        print(f"{p['label']} {p['probability']:.2f}" + (f"  {path}" if len(paths) > 1 else ""))
        if len(paths) > 1 and len(shown) < COMPARE_MAX:  # keep only what the compare pages show: bounded memory
            shown.append((manifest, pages))
        if len(paths) > 1 and cfg.explorer:
            linked.append({"name": path.name, "href": f"{sub}/index.html", **manifest["prediction"]})
    if shown:
        compare_pages(shown, out_dir)
    if linked:
        from catdog.views.explorer import write_folder_index

        write_folder_index(out_dir / "index.html", linked, weights.source)
    print(f"wrote {out_dir}" + (f" ({failed} of {len(paths)} images skipped)" if failed else ""))


if __name__ == "__main__":
    check_overrides("visualize")
    main()
