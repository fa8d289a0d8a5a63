"""``hf`` with ``streaming: true``: local parquet / arrow / imagefolder files read as a
``datasets.IterableDataset``. Every image is generated here (tiny PNGs); nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_image_sources import _opts, make_images, write_folder

from kdistill.config import load_config
from kdistill.data import Augment, RecipeConfig, load_dataset
from kdistill.errors import DataError

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")

NAMES = ["ant", "bee", "cat"]


def _table(paths, labels, label_feature=None):
    """A ``datasets.Dataset`` of the PNG bytes of ``paths`` with integer class labels."""
    feats = datasets.Features({"image": datasets.Image(decode=False),
                               "label": label_feature or datasets.ClassLabel(names=NAMES)})
    rows = {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p in paths], "label": [int(v) for v in labels]}
    return datasets.Dataset.from_dict(rows, features=feats)


def _write_arrow(ds, path):
    tbl = ds.data.table
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, tbl.schema) as w:
        w.write_table(tbl)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same 18 + 6 images as an image folder, parquet files (train in two files of 7 and
    11 rows) and arrow files."""
    root = tmp_path_factory.mktemp("hfs")
    x, y = make_images()
    xt, yt = make_images((2, 2, 2), seed=1)
    p_train = write_folder(root / "folder", x, y, "train")
    p_test = write_folder(root / "folder", xt, yt, "test")
    train, test = _table(p_train, y), _table(p_test, yt)
    for fmt in ("pq", "ar"):
        (root / fmt).mkdir()
    train.select(range(7)).to_parquet(str(root / "pq" / "train-0.parquet"))
    train.select(range(7, 18)).to_parquet(str(root / "pq" / "train-1.parquet"))
    test.to_parquet(str(root / "pq" / "test.parquet"))
    _write_arrow(train.select(range(7)), root / "ar" / "train-0.arrow")
    _write_arrow(train.select(range(7, 18)), root / "ar" / "train-1.arrow")
    _write_arrow(test, root / "ar" / "test.arrow")
    return root


def _stream(root, **kw):
    return load_dataset("hf", root=str(root), streaming=True, **_opts(**{"workers": 0, **kw}))


def _by_index(batches):
    return {int(i): (b["x"][k], int(b["y"][k])) for b in batches for k, i in enumerate(b["index"])}


def _order(loader, epoch, start=0):
    return [b["index"].tolist() for b in loader.iterate(epoch, start)]


# -- the same tensors as the map-style source ----------------------------------------------------
def test_streamed_files_give_the_map_style_tensors_and_write_no_cache(files, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    ref = load_dataset("imagefolder", root=str(files / "folder"), **_opts(resident=False, workers=0))
    want_eval = torch.cat([b["x"] for b in ref.train.batches(5)])
    aug = Augment(shift=2, flip=True)
    want = _by_index(ref.train.loader(5, seed=2, augment=aug).iterate(1))
    for fmt in ("pq", "ar"):
        d = _stream(files / fmt, workers=2)
        assert d.train.class_names == NAMES and len(d.train) == 18 and len(d.test) == 6
        assert torch.equal(d.train.labels(), ref.train.labels()) and torch.equal(d.test.labels(), ref.test.labels())
        # evaluation reads in file order: the same tensors in the same order
        assert torch.equal(torch.cat([b["x"] for b in d.train.batches(5)]), want_eval)
        assert torch.equal(torch.cat([b["x"] for b in d.test.batches(4)]),
                           torch.cat([b["x"] for b in ref.test.batches(4)]))
        assert torch.equal(d.train.take(torch.tensor([12, 3]))["x"], ref.train.take(torch.tensor([12, 3]))["x"])
        # training: the stream's order is its own, but every sample is the map-style one,
        # shift/flip included (drawn per sample from (seed, epoch))
        got = list(d.train.loader(5, seed=2, augment=aug).iterate(1))
        assert [len(b["y"]) for b in got] == [5, 5, 5, 3]
        by = _by_index(got)
        assert sorted(by) == list(range(18))
        assert all(torch.equal(by[i][0], want[i][0]) and by[i][1] == want[i][1] for i in range(18))
    # the streamed order is reproducible from (seed, epoch) and changes with either
    loader = _stream(files / "pq").train.loader(4, seed=3)
    first = _order(loader, 0)
    assert first == _order(_stream(files / "pq").train.loader(4, seed=3), 0)
    assert first != _order(loader, 1) and first != _order(_stream(files / "pq").train.loader(4, seed=4), 0)
    assert sum(first, []) != list(range(18))  # shuffled ...
    assert sum(_order(_stream(files / "pq").train.loader(4, shuffle=False), 0), []) == list(range(18))  # ... or not
    # nothing converted to Arrow in the cache (map-style load_dataset would write *.arrow there)
    assert not list((tmp_path / "cache").rglob("*.arrow"))


def test_streamed_imagefolder_reads_the_folder_and_its_classes(files):
    ref = load_dataset("imagefolder", root=str(files / "folder"), **_opts(resident=False, workers=0))
    d = _stream(files / "folder", format="imagefolder")
    assert d.train.class_names == NAMES and len(d.train) == 18
    by, want = _by_index(d.train.batches(7)), _by_index(ref.train.batches(7))
    # the builder's file order is its own: compare sample by sample through the labels and pixels
    assert sorted(v[1] for v in by.values()) == sorted(v[1] for v in want.values())
    assert sorted(tuple(v[0].flatten().tolist()) for v in by.values()) == \
        sorted(tuple(v[0].flatten().tolist()) for v in want.values())
    got = list(d.train.loader(5, seed=1).iterate(0))
    assert sorted(torch.cat([b["index"] for b in got]).tolist()) == list(range(18))
    assert all(torch.equal(b["y"], d.train.labels()[b["index"]]) for b in got)


# -- ranks and resume ----------------------------------------------------------------------------
def test_ranks_read_disjoint_parts_covering_the_epoch(files):
    d = _stream(files / "pq")
    two = [torch.cat([b["index"] for b in d.train.loader(4, seed=5, rank=r, world=2).iterate(2)]) for r in range(2)]
    assert len(two[0]) == len(two[1]) == 9
    assert not set(two[0].tolist()) & set(two[1].tolist())
    assert sorted(torch.cat(two).tolist()) == list(range(18))
    # 18 rows over 4 ranks: 5 each, two ranks repeat their first row (as DistributedSampler pads)
    four = [torch.cat([b["index"] for b in d.train.loader(2, seed=5, rank=r, world=4).iterate(2)]) for r in range(4)]
    assert [len(s) for s in four] == [5, 5, 5, 5]
    assert set(torch.cat(four).tolist()) == set(range(18))
    for r in range(4):
        own = four[r].tolist()
        others = {i for q in range(4) if q != r for i in four[q].tolist()}
        assert not set(own) & others
    assert [len(set(s.tolist())) for s in four] == [5, 5, 4, 4] and four[2][-1] == four[2][0]
    assert len(d.train.loader(2, rank=0, world=4)) == 3


def test_resume_mid_epoch_yields_the_same_remaining_batches(files):
    recipe = RecipeConfig(random_resized_crop=True, flip=0.5, mixup=0.4)
    d = _stream(files / "pq", size=10, resize=12, shuffle_buffer=6)
    for rank, world in ((0, 1), (1, 2)):
        full = list(d.train.loader(3, seed=7, augment=recipe, rank=rank, world=world).iterate(1))
        part = list(d.train.loader(3, seed=7, augment=recipe, rank=rank, world=world).iterate(1, start=2))
        assert len(part) == len(full) - 2 > 0
        for a, b in zip(part, full[2:], strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["x"], b["x"])
            assert torch.equal(a["y_soft"], b["y_soft"])


def test_a_teacher_cache_of_the_stream_replays_by_index(files, tmp_path):
    """The cache is written in file order (``batches``) and read by ``index`` in the
    shuffled training order: a wrong row number would replay another image's outputs."""
    from kdistill.cache import CachedTeacher, cache_teacher
    from kdistill.models import create_model

    d = _stream(files / "pq", shuffle_buffer=5)
    torch.manual_seed(0)
    net = create_model("convnet2", 3, d.input_shape).eval()
    cache_teacher(net, d.train, tmp_path / "c", views=2, augment=Augment(shift=1, flip=True), batch_size=7, seed=4)
    cached = CachedTeacher.open(tmp_path / "c", d.train, num_classes=3)
    for b in d.train.loader(5, seed=1, views=cached.views).iterate(1):
        with torch.no_grad():
            live = net(b["x"])
        assert torch.allclose(cached(b).logits, live, atol=1e-4)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_streamed_run_resumed_after_a_crash_is_bit_identical(files, tmp_path, crash_at_batch):
    from kdistill.runs import run_experiment

    over = ["data.name=hf", f"data.root={files / 'pq'}",
            "data.options={streaming: true, shuffle_buffer: 8, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}",
            "data.workers=1", "data.batch_size=5", "data.augment={shift: 1, flip: true}", "method={name: ce}",
            "train.epochs=2", "train.checkpoint_every=1", "train.deterministic=true", "train.progress=false",
            "train.device=cpu", "train.lr=0.01"]
    cfg = load_config(None, over, base={"student": {"model": "convnet2"}})
    straight = run_experiment(cfg, run_dir=tmp_path / "a", log=lambda s: None)
    saved = json.loads((Path(straight["run_dir"]) / "results.json").read_text())
    assert saved["dataset"]["train"] == 18 and straight["steps"] == 8

    # batch 1 of epoch 2 (4 batches an epoch): a checkpoint holds step 5
    crash_at_batch(6, lambda: run_experiment(cfg, run_dir=tmp_path / "b", log=lambda s: None))
    resumed = run_experiment(cfg, run_dir=tmp_path / "b", resume=True, log=lambda s: None)
    assert resumed["steps"] == 8
    a, b = _weights(straight["run_dir"]), _weights(resumed["run_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_streamed_input_says_what_is_wrong(files, tmp_path):
    with pytest.raises(DataError, match="no column 'img'.*image_column"):
        _stream(files / "pq", image_column="img")
    with pytest.raises(DataError, match="no column 'class'.*label_column"):
        _stream(files / "pq", label_column="class")
    # a label outside the ClassLabel's names (a file written by another tool)
    x, y = make_images((2, 2, 2), seed=3)
    paths = write_folder(tmp_path / "imgs", x, y)
    (tmp_path / "oob").mkdir()
    rows = _table(paths, [0, 1, 2, 0, 1, 5], label_feature=datasets.Value("int64"))
    tbl = rows.data.table.replace_schema_metadata(datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}).arrow_schema.metadata)
    pa.parquet.write_table(tbl, str(tmp_path / "oob" / "train.parquet"))
    pa.parquet.write_table(tbl, str(tmp_path / "oob" / "test.parquet"))
    with pytest.raises(DataError, match=r"column 'label' of the train split holds labels \[5\] outside \[0, 3\)"):
        _stream(tmp_path / "oob")
    # a save_to_disk folder is memory-mapped already: no streaming
    datasets.DatasetDict({"train": _table(paths, y), "test": _table(paths, y)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="save_to_disk folder.*drop data.options.streaming"):
        _stream(tmp_path / "saved")
    assert len(load_dataset("hf", root=str(tmp_path / "saved"), **_opts(workers=0)).train) == 6  # map-style reads it
    # no test split among the files
    (tmp_path / "notest").mkdir()
    _table(paths, y).to_parquet(str(tmp_path / "notest" / "train.parquet"))
    with pytest.raises(DataError, match="streaming needs a test split"):
        _stream(tmp_path / "notest")
    # what needs random access says so
    d = _stream(files / "pq")
    with pytest.raises(DataError, match="data.val_split needs random access"):
        d.train.split(0.2)
    with pytest.raises(DataError, match="data.resident true"):
        _stream(files / "pq", resident=True)
    # an undecodable image: named, or skipped and counted
    (tmp_path / "broken").mkdir()
    cells = _table(paths, y)
    broken = cells.cast_column("image", datasets.Image(decode=False)).map(
        lambda r, i: {"image": {"bytes": b"not a png" if i == 4 else r["image"]["bytes"], "path": None}},
        with_indices=True)
    broken.to_parquet(str(tmp_path / "broken" / "train.parquet"))
    _table(paths, y).to_parquet(str(tmp_path / "broken" / "test.parquet"))
    d = _stream(tmp_path / "broken")
    with pytest.raises(DataError, match="cannot decode image row 4 of 'image'.*on_bad=skip"):
        list(d.train.loader(3, seed=0).iterate(0))
    d = _stream(tmp_path / "broken", on_bad="skip")
    with pytest.warns(UserWarning, match="row 4"):
        got = torch.cat([b["index"] for b in d.train.loader(3, seed=0).iterate(0)])
    assert sorted(got.tolist()) == [0, 1, 2, 3, 5] and len(d.train.skipped) == 1
