"""Image decoding options travel as one typed object built from the data section, to the
sources that declare they decode; each default is spelled once."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import torch

import kdistill
from kdistill.config import DataConfig, validate_config
from kdistill.data import DATASETS, ArrayDataset, DataSplits, load_dataset, register_dataset
from kdistill.data.decode import DecodeOptions, decodes_images

SRC = Path(kdistill.__file__).parent
seen: dict[str, object] = {}


@register_dataset("toy_decoding")
@decodes_images
def toy_decoding(root=None, decode: DecodeOptions = DecodeOptions(), n: int = 8):
    seen["decode"] = decode
    x, y = torch.randn(n, 3), torch.arange(n) % 2
    return DataSplits(ArrayDataset(x, y, 2, "toy"), ArrayDataset(x, y, 2, "toy-test"))


@register_dataset("toy_with_a_workers_option")
def toy_workers(root=None, workers: str = "mine"):
    """An in-memory source whose own option happens to be called ``workers``."""
    seen["workers"] = workers
    x, y = torch.randn(4, 3), torch.arange(4) % 2
    return DataSplits(ArrayDataset(x, y, 2), ArrayDataset(x, y, 2))


def test_the_data_section_builds_the_options_object_the_source_receives():
    cfg = validate_config({"data": {"name": "toy_decoding", "resident": False, "workers": 3,
                                    "resident_budget_mb": 64}, "student": {"model": "mlp"}})
    load_dataset(cfg.data.name, decode=cfg.data.decode_options())
    assert seen["decode"] == DecodeOptions(resident=False, resident_budget_mb=64, workers=3)
    load_dataset("toy_decoding", workers=0)  # loose fields still work, over the defaults
    assert seen["decode"] == DecodeOptions(workers=0)


def test_a_source_that_does_not_decode_never_gets_decode_options():
    # before, a parameter named like an option (found by signature) received the data section's value
    load_dataset("toy_with_a_workers_option", decode=DecodeOptions(workers=5))
    assert seen["workers"] == "mine"


def test_every_image_source_declares_it_decodes():
    assert all(getattr(DATASETS.get(n), "decodes_images", False) for n in ("imagefolder", "hf", "webdataset"))
    assert not getattr(DATASETS.get("synthetic"), "decodes_images", False)


def test_each_default_is_spelled_once():
    fields = DataConfig.model_fields
    assert {k: fields[k].default for k in asdict(DecodeOptions())} == asdict(DecodeOptions())
    assert DataConfig(name="x").decode_options() == DecodeOptions()
    # no other module spells the budget or the resident default in a signature
    hits = [f"{p.relative_to(SRC)}" for p in SRC.rglob("*.py") if p.name != "decode.py"
            and re.search(r"(resident_budget_mb|budget_mb): float = 2048|resident: bool \| str = \"auto\"", p.read_text())]
    assert hits == []
    assert "inspect.signature" not in (SRC / "data" / "datasets.py").read_text()
