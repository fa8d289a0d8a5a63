"""Datasets (registry), in-memory arrays and the device-resident loader."""

from .arrays import UNLABELED, ArrayDataset, DataSplits
from .datasets import DATASETS, load_dataset, mnist1d_transfer, register_dataset
from .loaders import Augment, DeviceLoader, StoredViews

__all__ = [
    "DATASETS",
    "UNLABELED",
    "ArrayDataset",
    "Augment",
    "DataSplits",
    "DeviceLoader",
    "load_dataset",
    "mnist1d_transfer",
    "StoredViews",
    "register_dataset",
]
