"""Image sources (imagefolder, hf, webdataset), the streamed/resident loader, the recipe.

Every image is generated here (tiny PNGs); CI downloads nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdistill.config import load_config
from kdistill.data import ArrayDataset, Augment, DeviceLoader, RecipeConfig, load_dataset
from kdistill.data.recipe import Recipe, center_crop, rrc_boxes
from kdistill.errors import ConfigError, DataError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def make_images(n_per_class=(6, 6, 6), hw=(12, 12), channels=3, seed=0):
    """uint8 images (N, H, W, C) and labels: class c is brightest in channel c % C."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            a = rng.integers(0, 120, (*hw, channels), dtype=np.uint8)
            a[..., c % channels] += 100
            xs.append(a)
            ys.append(c)
    return np.stack(xs), np.array(ys)


def write_folder(root, images, labels, split=None, ext="png", names=("ant", "bee", "cat")):
    paths = []
    for i, (a, y) in enumerate(zip(images, labels)):
        d = root / split / names[y] if split else root / names[y]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:04d}.{ext}"
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def folder(tmp_path):
    x, y = make_images()
    xt, yt = make_images((2, 2, 2), seed=1)
    write_folder(tmp_path, x, y, "train")
    write_folder(tmp_path, xt, yt, "test")
    return tmp_path, (x, y), (xt, yt)


def _opts(**kw):
    return {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "workers": 0, **kw}


# -- the source --------------------------------------------------------------------------------------
def test_imagefolder_reads_classes_labels_and_pixels(folder):
    root, (x, y), (xt, yt) = folder
    d = load_dataset("imagefolder", root=str(root), **_opts())
    assert d.train.class_names == ["ant", "bee", "cat"] and d.num_classes == 3
    assert len(d.train) == 18 and len(d.test) == 6 and d.input_shape == (3, 12, 12)
    assert torch.equal(d.train.labels(), torch.from_numpy(y))
    # PNG is lossless and the size is the images' own: the tensors are the pixels, normalised
    want = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    got = torch.cat([b["x"] for b in d.train.batches(5)])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(d.train.take(torch.tensor([7, 2]))["x"], want[[7, 2]], atol=1e-6)


def test_split_layout_is_stratified_and_seeded(tmp_path):
    x, y = make_images((10, 10, 10))
    write_folder(tmp_path, x, y)
    a = load_dataset("imagefolder", root=str(tmp_path), test_split=0.2, **_opts())
    b = load_dataset("imagefolder", root=str(tmp_path), test_split=0.2, **_opts())
    assert torch.bincount(a.test.labels()).tolist() == [2, 2, 2]
    assert a.train.fingerprint() == b.train.fingerprint()
    c = load_dataset("imagefolder", root=str(tmp_path), test_split=0.2, split_seed=5, **_opts())
    assert c.train.fingerprint() != a.train.fingerprint()


def test_grey_and_resize_center_crop(tmp_path):
    x, y = make_images((3, 3), hw=(20, 30), channels=1)
    write_folder(tmp_path, x, y, names=("a", "b"))
    d = load_dataset("imagefolder", root=str(tmp_path), size=8, resize=10, test_split=0.34, workers=0)
    assert d.input_shape == (1, 8, 8) and len(d.train.mean) == 1
    # "auto" statistics standardise the training center crops
    allx = torch.cat([b["x"] for b in d.train.batches(64)])
    assert abs(float(allx.mean())) < 0.05 and abs(float(allx.std()) - 1) < 0.1


def test_same_batches_as_the_in_memory_loader(folder):
    """Resident, streamed (2 workers) and ArrayDataset copies of one image set give the
    same training batches for the same seed and shift/flip augmentation."""
    root, (x, y), _ = folder
    aug = Augment(shift=2, flip=True)
    xs = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    arrays = ArrayDataset(xs, torch.from_numpy(y), 3)
    want = list(DeviceLoader(arrays, 5, seed=3, augment=aug).iterate(1))
    for resident, workers in ((True, 0), (False, 2)):
        d = load_dataset("imagefolder", root=str(root), **_opts(resident=resident, workers=workers))
        assert d.train.resident is resident
        got = list(d.train.loader(5, seed=3, augment=aug).iterate(1))
        assert len(got) == len(want) == 4
        for a, b in zip(got, want):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["y"], b["y"])
            assert torch.allclose(a["x"], b["x"], atol=1e-6)


def test_resume_mid_epoch_and_recipe_reproducible(folder):
    root, _, _ = folder
    recipe = RecipeConfig(random_resized_crop=True, flip=0.5, color_jitter=True, auto_augment="trivial",
                          mixup=0.4, cutmix=1.0)
    d = load_dataset("imagefolder", root=str(root), size=10, resize=12, **_opts(resident=False, workers=2))
    full = list(d.train.loader(4, seed=7, augment=recipe).iterate(2))
    again = list(d.train.loader(4, seed=7, augment=recipe).iterate(2, start=3))
    assert len(again) == len(full) - 3
    for a, b in zip(again, full[3:]):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y_soft"], b["y_soft"])
    other = list(d.train.loader(4, seed=7, augment=recipe).iterate(3))
    assert not torch.equal(other[0]["x"], full[0]["x"])  # a new epoch draws new views


def test_ranks_read_disjoint_shards_covering_the_epoch(folder):
    root, _, _ = folder
    d = load_dataset("imagefolder", root=str(root), **_opts(resident=False))
    seen = [torch.cat([b["index"] for b in d.train.loader(4, seed=1, rank=r, world=3).iterate(0)]) for r in range(3)]
    assert all(len(s) == 6 for s in seen)  # 18 samples: no padding needed
    allidx = torch.cat(seen)
    assert sorted(allidx.tolist()) == list(range(18))


def test_eval_batches_are_deterministic(folder):
    root, _, _ = folder
    d = load_dataset("imagefolder", root=str(root), size=8, resize=12, **_opts(resident=False, workers=2))
    a = torch.cat([b["x"] for b in d.test.batches(4)])
    b = torch.cat([b["x"] for b in d.test.batches(3)])
    assert a.shape == (6, 3, 8, 8) and torch.equal(a, b)


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("imagefolder", root=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", root=str(tmp_path / "empty"))
    x, y = make_images((4,))
    write_folder(tmp_path / "one", x, y)
    with pytest.raises(DataError, match="one class"):
        load_dataset("imagefolder", root=str(tmp_path / "one"), **_opts())
    write_folder(tmp_path / "two", *make_images((4, 4)), names=("a", "b"))
    (tmp_path / "two" / "c").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset("imagefolder", root=str(tmp_path / "two"), **_opts())


def test_unreadable_image_fails_naming_it_or_is_skipped_and_counted(folder):
    root, _, _ = folder
    bad = root / "train" / "bee" / "0007.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    d = load_dataset("imagefolder", root=str(root), **_opts(resident=False))
    with pytest.raises(DataError, match="bee/0007.png.*on_bad=skip"):
        list(d.train.loader(4).iterate(0))
    d = load_dataset("imagefolder", root=str(root), on_bad="skip", **_opts(resident=False))
    with pytest.warns(UserWarning, match="0007.png"):
        got = list(d.train.loader(4).iterate(0))
    assert sum(len(b["y"]) for b in got) == 17 and len(d.train.skipped) == 1
    assert 7 not in torch.cat([b["index"] for b in got]).tolist()


def test_recipe_config_errors_are_clear(tmp_path):
    base = {"student": {"model": "mlp"}, "data": {"recipe": {"flipp": 0.5}}}
    with pytest.raises(ConfigError, match="data.recipe.flipp.*Did you mean 'flip'"):
        load_config(base=base)
    base["data"] = {"recipe": {"flip": 0.5}, "augment": {"flip": True}}
    with pytest.raises(ConfigError, match="not both"):
        load_config(base=base)
    base["data"] = {"recipe": {"random_resized_crop": {"scale": [0.9, 0.1]}}}
    with pytest.raises(ConfigError, match="low <= high"):
        load_config(base=base)


# -- the recipe --------------------------------------------------------------------------------------
def test_mixup_and_cutmix_labels_follow_the_pixels():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, -1])
    for mode in ({"mixup": 1.0}, {"cutmix": 1.0}):
        r = Recipe(RecipeConfig(**mode, label_smoothing=0.1), num_classes=3)
        out = r(x, y, key=(0, 0, 3, 0))
        soft = out["y_soft"]
        labelled = (y >= 0) & (y.flip(0) >= 0)
        assert torch.allclose(soft[labelled].sum(1), torch.ones(int(labelled.sum())))
        assert (soft[~labelled] == 0).all()  # unlabelled partners leave CE
        # the mixed image is x*lam + partner*(1-lam) (Mixup) or a pasted box (CutMix): recover lam
        # sample 2 (class 2) is mixed with sample 3 (class 0): its class-2 mass is lam*on + (1-lam)*off
        on, off = 0.9 + 0.1 / 3, 0.1 / 3
        lam = float((soft[2, 2] - off) / (on - off))
        if "mixup" in mode:
            assert torch.allclose(out["x"], x * lam + x.flip(0) * (1 - lam), atol=1e-6)
        else:
            assert abs(float((out["x"] == x).all(1).float().mean()) - lam) < 1e-6
        again = r(x, y, key=(0, 0, 3, 0))
        assert torch.equal(again["x"], out["x"])


def test_rrc_boxes_lie_inside_and_respect_scale():
    rng = np.random.default_rng(0)
    b = rrc_boxes(500, 40, 60, (0.2, 0.6), (0.75, 1.333), rng)
    top, left, h, w = b.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
    frac = h * w / 2400
    assert frac.min() > 0.15 and frac.max() < 0.7  # rounding of sides widens the range a little


def test_recipe_ops_keep_range_and_shape():
    x = torch.rand(16, 3, 12, 12)
    r = Recipe(RecipeConfig(random_resized_crop=True, flip=0.5, color_jitter={"hue": 0.1}, auto_augment="rand"),
               num_classes=3)
    out = r(x, torch.zeros(16, dtype=torch.long), key=(1, 2, 3, 0), size=(8, 8))
    assert out["x"].shape == (16, 3, 8, 8) and "y_soft" not in out
    assert out["x"].min() >= 0 and out["x"].max() <= 1
    assert torch.equal(center_crop(torch.arange(25.).view(1, 1, 5, 5), (3, 3))[0, 0, 0], torch.tensor([6., 7., 8.]))


# -- the same images through the other sources ---------------------------------------------------
def _hf_dataset(paths, labels):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ant", "bee", "cat"])})
    return datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": labels.tolist()}, features=feats)


def test_hf_saved_and_parquet_give_the_imagefolder_tensors(tmp_path):
    datasets = pytest.importorskip("datasets")
    x, y = make_images()
    xt, yt = make_images((2, 2, 2), seed=1)
    p_train = write_folder(tmp_path / "folder", x, y, "train")
    p_test = write_folder(tmp_path / "folder", xt, yt, "test")
    dd = datasets.DatasetDict({"train": _hf_dataset(p_train, y), "test": _hf_dataset(p_test, yt)})
    dd = dd.cast_column("image", datasets.Image(decode=False))
    dd = dd.map(lambda r: {"image": {"bytes": open(r["image"]["path"], "rb").read(), "path": None}})
    dd.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    dd["train"].to_parquet(str(tmp_path / "pq" / "train.parquet"))
    dd["test"].to_parquet(str(tmp_path / "pq" / "test.parquet"))
    ref = load_dataset("imagefolder", root=str(tmp_path / "folder"), **_opts(resident=False))
    want = list(ref.train.loader(5, seed=2, augment=Augment(2, True)).iterate(0))
    for root in ("saved", "pq"):
        d = load_dataset("hf", root=str(tmp_path / root), **_opts(resident=False, workers=1))
        assert d.train.class_names == ["ant", "bee", "cat"] and len(d.test) == 6
        got = list(d.train.loader(5, seed=2, augment=Augment(2, True)).iterate(0))
        assert all(torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) for a, b in zip(got, want))
    with pytest.raises(DataError, match="no column 'img'.*image_column"):
        load_dataset("hf", root=str(tmp_path / "saved"), image_column="img", **_opts())


def write_shards(root, paths, labels, per_shard, prefix="train"):
    import io
    import tarfile

    names = []
    for s in range(0, len(paths), per_shard):
        name = f"{prefix}-{s // per_shard:03d}.tar"
        with tarfile.open(root / name, "w") as tf:
            for i in range(s, min(s + per_shard, len(paths))):
                for ext, data in (("png", paths[i].read_bytes()), ("cls", str(int(labels[i])).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        names.append(name)
    return names


def test_webdataset_shards_give_the_same_batches_and_resume_exactly(tmp_path):
    x, y = make_images()
    xt, yt = make_images((2, 2, 2), seed=1)
    p_train = write_folder(tmp_path / "folder", x, y, "train")
    p_test = write_folder(tmp_path / "folder", xt, yt, "test")
    (tmp_path / "wds").mkdir()
    assert len(write_shards(tmp_path / "wds", p_train, y, 5)) == 4  # 5, 5, 5, 3 samples
    write_shards(tmp_path / "wds", p_test, yt, 6, "test")
    pats = {"train": "train-{000..003}.tar", "test": "test-000.tar"}
    ref = load_dataset("imagefolder", root=str(tmp_path / "folder"), **_opts(resident=False))
    d = load_dataset("webdataset", root=str(tmp_path / "wds"), **pats, **_opts(resident=False, workers=1))
    assert torch.equal(d.train.labels(), torch.from_numpy(y)) and len(d.test) == 6
    want = list(ref.train.loader(4, seed=5, augment=Augment(1, True)).iterate(1))
    got = list(d.train.loader(4, seed=5, augment=Augment(1, True)).iterate(1))
    assert all(torch.equal(a["x"], b["x"]) and torch.equal(a["index"], b["index"]) for a, b in zip(got, want))
    # shard order: each rank reads whole shards, disjoint, covering the epoch; resume is exact
    s = load_dataset("webdataset", root=str(tmp_path / "wds"), order="shards", **pats, **_opts(resident=False))
    ranks = [torch.cat([b["index"] for b in s.train.loader(3, seed=1, rank=r, world=2).iterate(0)])
             for r in range(2)]
    shard_of = lambda idx: set((idx // 5).tolist())  # noqa: E731  (5 samples a shard, in order)
    assert not shard_of(ranks[0]) & shard_of(ranks[1])
    assert set(torch.cat(ranks).tolist()) == set(range(18)) and len(ranks[0]) == len(ranks[1]) == 10
    full = list(s.train.loader(3, seed=1, rank=1, world=2).iterate(0))
    part = list(s.train.loader(3, seed=1, rank=1, world=2).iterate(0, start=2))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(part, full[2:])) and len(part) == len(full) - 2
    (tmp_path / "wds" / "test-000.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(DataError, match="cannot read shard .*test-000.tar"):
        load_dataset("webdataset", root=str(tmp_path / "wds"), **pats, **_opts())


# -- teacher caches of random crops (FKD) ------------------------------------------------------------
def test_cached_crop_views_replay_the_teachers_outputs(folder, tmp_path):
    from kdistill.cache import CachedTeacher, cache_teacher
    from kdistill.data import CropFlip, views_augment
    from kdistill.models import create_model

    root, _, _ = folder
    d = load_dataset("imagefolder", root=str(root), **_opts(resident=False))
    torch.manual_seed(0)
    net = create_model("convnet2", 3, d.input_shape).eval()
    view = views_augment(RecipeConfig(random_resized_crop={"scale": [0.3, 1.0]}, flip=0.5), d.input_shape)
    assert isinstance(view, CropFlip) and view.crop and view.flip
    meta = cache_teacher(net, d.train, tmp_path / "c", views=3, augment=view, topk=2, batch_size=7, seed=4)
    assert meta["augment"]["kind"] == "crop_flip" and meta["views"] == 3
    cached = CachedTeacher.open(tmp_path / "c", d.train, num_classes=3)
    seen = set()
    for epoch in range(2):
        for b in d.train.loader(5, seed=1, views=cached.views).iterate(epoch):
            with torch.no_grad():
                live = net(b["x"]).topk(2, dim=1)
            out = cached(b)  # no teacher forward: the stored outputs of exactly this view
            got = out.logits.topk(2, dim=1)
            assert torch.equal(got.indices, live.indices)
            assert torch.allclose(got.values, live.values, atol=1e-4)
            seen |= set(zip(b["index"].tolist(), b["view"].tolist()))
    assert len({v for _, v in seen}) == 3  # every stored view is shown
    with pytest.raises(ConfigError, match="mixup/cutmix"):
        views_augment(RecipeConfig(random_resized_crop=True, mixup=0.2))


def test_recipe_on_arrays_undoes_their_normalisation_or_refuses():
    x = torch.rand(8, 1, 10, 10)
    m, s = torch.tensor([0.3]), torch.tensor([0.2])
    arrays = ArrayDataset((x - m) / s, torch.arange(8) % 2, 2, normalization=(m, s))
    cfg = RecipeConfig(color_jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    got = next(DeviceLoader(arrays, 8, shuffle=False, augment=cfg).iterate(0))["x"]
    assert torch.allclose(got, (x - m) / s, atol=1e-5)  # identity jitter: back to the same inputs
    plain = ArrayDataset(torch.randn(8, 1, 10, 10) * 3, torch.arange(8) % 2, 2)
    with pytest.raises(DataError, match=r"images in \[0, 1\]"):
        next(DeviceLoader(plain, 8, augment=RecipeConfig(color_jitter=True)).iterate(0))
