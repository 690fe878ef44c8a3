"""Show what each layer sees: ``python visualize.py image=PATH [ckpt=PATH|latest|none]``; see conf/visualize.yaml."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from catdog.cli import check_overrides, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@user_errors
def main(cfg: DictConfig) -> None:
    from catdog import CatDogError
    from catdog.plots import NORMS
    from catdog.visualize import (
        COMPARE_MAX,
        compare_pages,
        filters_page,
        find_checkpoint,
        image_paths,
        load_model,
        save_png,
        unique_dirs,
        visualize_image,
    )

    out_dir = Path(cfg.out_dir)
    if cfg.mode not in ("activations", "filters"):
        raise CatDogError(f"mode must be activations or filters, got {cfg.mode!r}")
    if cfg.norm not in NORMS:
        raise CatDogError(f"norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.mode == "activations":  # check the images before the (slower) model load
        paths = image_paths(OmegaConf.to_container(cfg.image) if OmegaConf.is_list(cfg.image) else str(cfg.image))
    ckpt = find_checkpoint(str(cfg.ckpt))
    model, preprocessing = load_model(ckpt)
    print(f"checkpoint: {ckpt}" if ckpt else "ckpt=none: using the untrained network (Keras initialisation, seed 0)")

    if cfg.mode == "filters":
        f = cfg.filters
        page = filters_page(model, cfg.layer, cfg.per_row, f.size, f.steps, f.step_size)
        print(f"wrote {save_png(page, out_dir / f'filters_{cfg.layer}.png')}")
        return

    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers
    gradcam_layer = cfg.gradcam_layer if cfg.gradcam else None
    shown, failed = [], 0
    for path, sub in zip(paths, unique_dirs(paths), strict=True):
        target = out_dir if len(paths) == 1 else out_dir / sub
        try:
            manifest = visualize_image(
                model,
                path,
                target,
                preprocessing,
                layers,
                cfg.per_row,
                cfg.norm,
                cfg.channel,
                gradcam_layer,
                str(ckpt or "none"),
            )
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
            shown.append(manifest)
    if shown:
        compare_pages(shown, out_dir)
    print(f"wrote {out_dir}" + (f" ({failed} of {len(paths)} images skipped)" if failed else ""))


if __name__ == "__main__":
    check_overrides("visualize")
    main()
