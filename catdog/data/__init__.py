"""The data: ``datamodule`` (``CatDogDataModule``, the folder listing, where the pictures live: the rules for
``data.cache``), ``augment`` (per picture in the loader workers, per batch on the device), ``cache`` (the decoded
cache and its batches of indices), ``loading`` (the epoch's shuffle, seeded augmentation, the resumable loader)."""

from catdog.data.datamodule import CatDogDataModule, free_memory, image_folder, val_split

__all__ = ["CatDogDataModule", "free_memory", "image_folder", "val_split"]
