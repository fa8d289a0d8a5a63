"""Datasets (registry), in-memory arrays and the device-resident loader."""

from . import hf, imagefolder, webdataset  # noqa: F401  (register the image sources)
from .arrays import UNLABELED, ArrayDataset, DataSplits
from .datasets import DATASETS, load_dataset, mnist1d_transfer, register_dataset
from .images import ImageLoader, ImageSet
from .loaders import Augment, DeviceLoader, StoredViews
from .protocol import Dataset, Loader
from .recipe import Recipe, RecipeConfig

__all__ = [
    "DATASETS",
    "UNLABELED",
    "ArrayDataset",
    "Augment",
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
]
