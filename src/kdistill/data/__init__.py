"""Datasets (registry), in-memory arrays and the device-resident loader."""

from . import hf, imagefolder, webdataset  # noqa: F401  (register the image sources)
from .arrays import UNLABELED, ArrayDataset, DataSplits
from .datasets import DATASETS, load_dataset, mnist1d_transfer, register_dataset
from .images import ImageLoader, ImageSet
from .loaders import Augment, DeviceLoader, StoredViews, augment_from_meta
from .protocol import Dataset, Loader, split, subset
from .recipe import CropFlip, Recipe, RecipeConfig, views_augment

__all__ = [
    "DATASETS",
    "UNLABELED",
    "ArrayDataset",
    "Augment",
    "augment_from_meta",
    "CropFlip",
    "views_augment",
    "DataSplits",
    "Dataset",
    "Loader",
    "DeviceLoader",
    "ImageLoader",
    "ImageSet",
    "Recipe",
    "RecipeConfig",
    "load_dataset",
    "mnist1d_transfer",
    "StoredViews",
    "register_dataset",
    "split",
    "subset",
]
