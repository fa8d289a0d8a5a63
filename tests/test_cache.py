"""Teacher-output caches: round trip, refusals, top-k targets, augmented views."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.cache import CachedTeacher, TopKTeacherOutput, cache_teacher, read_meta
from kdistill.data import Augment, DeviceLoader, load_dataset, subset
from kdistill.errors import ConfigError, DataError
from kdistill.losses import kl_to_targets
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.teachers import EnsembleTeacher, ModuleTeacher


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", num_classes=6, input_shape=(1, 8, 8), n_train=96, n_test=40)


def _mlp(seed: int, k: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", k, (1, 8, 8), hidden=(32,))


@pytest.fixture(scope="module")
def teacher():
    t = ModuleTeacher(_mlp(1), 6)
    # sharper logits than at init, so top-k truncation matters
    with torch.no_grad():
        t.module.head.weight.mul_(8)
    return t


def test_cached_teacher_gives_the_live_kd_loss(tmp_path, data, teacher):
    cache_teacher(teacher, data.train, tmp_path / "c", batch_size=32)
    cached = CachedTeacher.open(tmp_path / "c", data.train, num_classes=6).to("cpu")
    student = _mlp(2)
    live_d = create("kd", student, teacher, temperature=4.0)
    cached_d = create("kd", student, cached, temperature=4.0)
    idx = torch.tensor([5, 0, 77, 31, 95, 12])
    batch = {"x": data.train.x[idx], "y": data.train.y[idx], "index": idx}
    live, fromcache = live_d(batch), cached_d(batch)
    assert torch.allclose(fromcache["loss_kd"], live["loss_kd"], rtol=1e-6, atol=1e-7)
    assert torch.allclose(fromcache["loss"], live["loss"], rtol=1e-6, atol=1e-7)
    # the gradient reaching the student is the same too
    g_live = torch.autograd.grad(live["loss"], student.head.weight)[0]
    g_cache = torch.autograd.grad(fromcache["loss"], student.head.weight)[0]
    assert torch.allclose(g_live, g_cache, atol=1e-7)


def test_fp16_cache_is_close_and_half_the_size(tmp_path, data, teacher):
    m32 = cache_teacher(teacher, data.train, tmp_path / "a")
    m16 = cache_teacher(teacher, data.train, tmp_path / "b", dtype="fp16")
    assert np.load(tmp_path / "b" / "logits.npy").nbytes * 2 == np.load(tmp_path / "a" / "logits.npy").nbytes
    assert m16["bytes"] < m32["bytes"]
    c = CachedTeacher.open(tmp_path / "b", data.train, 6).to("cpu")
    idx = torch.arange(96)
    live = teacher({"x": data.train.x}).logits
    # fp16 has an 11-bit significand: relative error at most 2^-11
    assert torch.allclose(c({"index": idx}).logits, live, rtol=2**-11, atol=1e-4)


def test_refuses_a_cache_for_other_data(tmp_path, data, teacher):
    cache_teacher(teacher, data.train, tmp_path / "c")
    with pytest.raises(DataError, match="holds 96 samples but the training data has 60"):
        CachedTeacher.open(tmp_path / "c", subset(data.train, 60), 6)
    x = data.train.x.clone()
    x[3, 0, 0, 0] += 1.0
    with pytest.raises(DataError, match="dataset fingerprint .* differs"):
        CachedTeacher.open(tmp_path / "c", replace(data.train, x=x), 6)
    with pytest.raises(DataError, match="has 6 classes but the data has 10"):
        CachedTeacher.open(tmp_path / "c", data.train, 10)
    with pytest.raises(DataError, match="teacher fingerprint"):
        CachedTeacher.open(tmp_path / "c", data.train, 6, teacher=ModuleTeacher(_mlp(9), 6))
    CachedTeacher.open(tmp_path / "c", data.train, 6, teacher=teacher)  # the right one passes
    with pytest.raises(DataError, match="not a teacher cache"):
        CachedTeacher.open(tmp_path, data.train, 6)
    for resident in (True, False):
        c = CachedTeacher.open(tmp_path / "c", data.train, 6, resident=resident).to("cpu")
        with pytest.raises(DataError, match="asks for sample 96, but the teacher cache .* holds 96 samples"):
            c({"index": torch.tensor([3, 96])})


def test_existing_cache_is_refused_and_failures_leave_nothing(tmp_path, data, teacher):
    cache_teacher(teacher, data.train, tmp_path / "c")
    with pytest.raises(ConfigError, match="already exists"):
        cache_teacher(teacher, data.train, tmp_path / "c")
    with pytest.raises(ConfigError, match=r"topk must lie in \[1, 6\]"):
        cache_teacher(teacher, data.train, tmp_path / "d", topk=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folder left behind
    meta = cache_teacher(teacher, data.train, tmp_path / "c", topk=2, overwrite=True)
    assert read_meta(tmp_path / "c")["topk"] == meta["topk"] == 2


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_topk_targets_are_the_full_targets_restricted_and_renormalised(tmp_path, data, teacher, temperature):
    k = 3
    meta = cache_teacher(teacher, data.train, tmp_path / "c", topk=k)
    c = CachedTeacher.open(tmp_path / "c", data.train, 6).to("cpu")
    idx = torch.tensor([4, 9, 60])
    out = c({"index": idx})
    assert isinstance(out, TopKTeacherOutput)
    q = out.soft_targets(temperature)
    assert torch.allclose(q.sum(-1), torch.ones(3), atol=1e-6)
    assert ((q > 0).sum(-1) == k).all()

    # by hand: keep the k largest teacher logits, softmax over them at T, zero elsewhere
    z = teacher({"x": data.train.x[idx]}).logits.double()
    s = _mlp(2)(data.train.x[idx]).double()
    T = temperature
    expected = 0.0
    for r in range(3):
        top = sorted(range(6), key=lambda i: -z[r, i].item())[:k]
        norm = sum(math.exp(z[r, j].item() / T) for j in top)
        log_ps = F.log_softmax(s[r] / T, dim=-1)
        for i in top:
            qi = math.exp(z[r, i].item() / T) / norm
            assert q[r, i].item() == pytest.approx(qi, rel=1e-5)
            expected += qi * (math.log(qi) - log_ps[i].item())
    expected = expected / 3 * T * T
    got = kl_to_targets(s.float(), out.log_soft_targets(T), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the stand-in logits give the same targets at moderate T, and the right argmax
    assert torch.allclose(F.softmax(out.logits / T, -1), q, atol=1e-6)
    assert torch.equal(out.logits.argmax(-1), z.argmax(-1))
    # storage: k values + k int16 classes per sample instead of 6 fp32 logits
    assert np.load(tmp_path / "c" / "topk_values.npy").nbytes == 96 * k * 4
    assert np.load(tmp_path / "c" / "topk_indices.npy").dtype == np.int16
    assert meta["bytes_saved"] == meta["bytes_full_fp32"] - meta["bytes"]


def test_topk_fp16_saves_bytes(tmp_path, data, teacher):
    meta = cache_teacher(teacher, data.train, tmp_path / "c", topk=2, dtype="fp16")
    # 2 fp16 values + 2 int16 classes = 8 bytes per sample vs 24 for 6 fp32 logits (plus .npy headers)
    payload = 96 * 8
    headers = meta["bytes"] - payload
    assert 0 < headers <= 2 * 128 + 4096  # two .npy headers + meta.json
    assert meta["bytes_full_fp32"] == 96 * 6 * 4


def test_mean_prob_ensemble_cache_keeps_every_temperature(tmp_path, data):
    ens = EnsembleTeacher([_mlp(3), _mlp(4)], "mean_prob")
    cache_teacher(ens, data.train, tmp_path / "c")
    c = CachedTeacher.open(tmp_path / "c", data.train, 6).to("cpu")
    idx = torch.tensor([1, 2, 50])
    live = ens({"x": data.train.x[idx]})
    got = c({"index": idx})
    for T in (1.0, 4.0):
        assert torch.allclose(got.log_soft_targets(T), live.log_soft_targets(T), atol=1e-6)
    with pytest.raises(ConfigError, match="top-k cache cannot represent"):
        cache_teacher(ens, data.train, tmp_path / "d", topk=2)


def test_k_view_cache_student_sees_exactly_the_teachers_input(tmp_path, data, teacher):
    aug = Augment(shift=2, flip=True)
    # the tap on the flatten layer's input records exactly what the teacher was given
    spec = "body.flatten:input"
    cache_teacher(teacher, data.train, tmp_path / "c", views=3, augment=aug, features=[spec], seed=7)
    c = CachedTeacher.open(tmp_path / "c", data.train, 6).to("cpu")
    assert c.views is not None and c.views.count == 3
    loader = DeviceLoader(data.train, 32, seed=0, views=c.views)
    seen_views = set()
    for epoch in range(3):
        for batch in loader.iterate(epoch):
            out = c(batch, [spec])
            assert torch.equal(out.features[spec], batch["x"])
            seen_views.update(batch["view"].tolist())
            # and the cached logits are the teacher's on that very input
            assert torch.allclose(out.logits, teacher({"x": batch["x"]}).logits, atol=1e-5)
    assert seen_views == {0, 1, 2}
    # views differ: some view of some sample is not the plain input
    first = next(loader.iterate(0))
    assert not torch.equal(first["x"], data.train.x[first["index"]])
    with pytest.raises(ConfigError, match="holds 3 augmented view"):
        c({"index": torch.arange(4)})
    with pytest.raises(ConfigError, match="holds no features"):
        c(first, ["head:input"])
    with pytest.raises(ConfigError, match="needs an augmentation"):
        cache_teacher(teacher, data.train, tmp_path / "d", views=2)


def test_k_view_loader_shards_cover_the_epoch(data, tmp_path, teacher):
    cache_teacher(teacher, data.train, tmp_path / "c", views=2, augment=Augment(1, False))
    c = CachedTeacher.open(tmp_path / "c", data.train, 6)
    full = {
        (int(i), int(v))
        for b in DeviceLoader(data.train, 16, seed=3, views=c.views).iterate(1)
        for i, v in zip(b["index"], b["view"], strict=False)
    }
    shards = set()
    for rank in range(2):
        for b in DeviceLoader(data.train, 8, seed=3, views=c.views, rank=rank, world=2).iterate(1):
            shards |= {(int(i), int(v)) for i, v in zip(b["index"], b["view"], strict=False)}
    # every process picks the same view for a sample in an epoch
    assert shards == full and len(full) == 96


def test_cache_answers_eval_inputs_by_content(tmp_path, data, teacher):
    cache_teacher(teacher, data.train, tmp_path / "c", eval_sets={"test": data.test})
    c = CachedTeacher.open(tmp_path / "c", data.train, 6).to("cpu")
    x = data.test.x[[7, 3, 39]]
    assert torch.allclose(c({"x": x}).logits, teacher({"x": x}).logits, atol=1e-6)
    # training rows too (cached unaugmented)
    assert torch.allclose(c({"x": data.train.x[:2]}).logits, teacher({"x": data.train.x[:2]}).logits, atol=1e-6)
    with pytest.raises(DataError, match="holds no output for an input"):
        c({"x": torch.zeros(1, 1, 8, 8)})


def test_cache_teacher_cli_then_train_from_the_cache(tmp_path, data):
    from safetensors.torch import save_file

    from kdistill.cli import main
    from kdistill.config import load_config
    from kdistill.runs import run_experiment

    ckpt = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in _mlp(1).state_dict().items()}, str(ckpt))
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "data: {name: synthetic,\n"
        "       options: {num_classes: 6, input_shape: [1, 8, 8], n_train: 96, n_test: 40},\n"
        "       batch_size: 32, augment: {shift: 1, flip: true}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: {name: kd, temperature: 4}\n"
        "train: {epochs: 2, lr: 0.01, device: cpu, precision: fp32}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n"
    )
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(cfg_file), "--out", str(cache), "--views", "2", "--dtype", "fp16"]) == 0
    meta = read_meta(cache)
    assert meta["views"] == 2 and meta["augment"] == {"shift": 1, "flip": True}
    assert set(meta["eval_sets"]) == {"test"}
    # the same config pointing at the cache trains (views reach the loader) and reports teacher metrics
    cfg = load_config(cfg_file, ["teacher.model=null", "teacher.checkpoint=null", f"teacher.cache={cache}"])
    res = run_experiment(cfg, tmp_path / "run", log=lambda s: None)
    assert res["teacher"]["cache"] == str(cache)
    assert 0.0 <= res["final"]["test"]["agreement"] <= 1.0
    # training under another augmentation than the cache's is refused before any step
    cfg = load_config(
        cfg_file, ["teacher.model=null", "teacher.checkpoint=null", f"teacher.cache={cache}", "data.augment.shift=2"]
    )
    with pytest.raises(ConfigError, match=r"data.augment \(shift=2, flip=True\) differs .* \(shift=1, flip=True\)"):
        run_experiment(cfg, tmp_path / "run2", log=lambda s: None)
    # a second cache-teacher to the same folder is refused with exit code 2
    assert main(["cache-teacher", str(cfg_file), "--out", str(cache)]) == 2


def test_teacher_fingerprint_covers_buffers():
    from kdistill.cache import teacher_fingerprint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    a = teacher_fingerprint(ModuleTeacher(net))
    assert a == teacher_fingerprint(net) and len(a) == 32
    net[1].running_mean += 1.0  # same parameters, other statistics: another teacher
    assert teacher_fingerprint(net) != a
