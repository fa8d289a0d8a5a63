"""Datasets (registry), in-memory arrays and the device-resident loader."""

from .arrays import UNLABELED, ArrayDataset, DataSplits
from .datasets import DATASETS, load_dataset, mnist1d_transfer, register_dataset
from .loaders import Augment, DeviceLoader, StoredViews
from .protocol import Dataset, Loader

__all__ = [
    "DATASETS",
    "UNLABELED",
    "ArrayDataset",
    "Augment",
    "DataSplits",
    "Dataset",
    "Loader",
    "DeviceLoader",
    "load_dataset",
    "mnist1d_transfer",
    "StoredViews",
    "register_dataset",
]
