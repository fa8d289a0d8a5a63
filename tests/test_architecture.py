"""The architecture holds: the four recipes of docs/ARCHITECTURE.md work from outside the
package (each registers a toy method / dataset source / scheme / teacher kind *here*, in
the test module, and trains it one epoch on tiny data), the import layers are enforced,
no code outside ``data/`` reads a dataset's arrays, and the names are single-spelled."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdistill.config import RunConfig, TrainConfig, load_config, validate_config
from kdistill.data import ArrayDataset, DataSplits, load_dataset, register_dataset
from kdistill.engine.trainer import Trainer
from kdistill.errors import ConfigError, DataError
from kdistill.methods import METHODS, Method, create, register_method
from kdistill.models import create_model
from kdistill.runs import TeacherContext, run_experiment
from kdistill.schemes import Scheme, SchemeConfig, SchemeContext, model_path, register_scheme, run_scheme, summary
from kdistill.teachers import ModuleTeacher, register_teacher_kind

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kdistill"
TINY = {"name": "synthetic", "options": {"n_train": 64, "n_test": 32, "input_shape": [1, 4, 4], "num_classes": 3},
        "batch_size": 16}
TRAIN = {"epochs": 1, "device": "cpu", "optimizer": "sgd", "lr": 0.05, "progress": False}


def _cfg(tmp_path: Path, **sections) -> RunConfig:
    raw = {"data": TINY, "student": {"model": "mlp", "kwargs": {"hidden": [8]}}, "train": TRAIN,
           "output": {"dir": str(tmp_path), "name": "run"}} | sections
    return validate_config(raw)


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# -- recipe 1: a method ---------------------------------------------------------------------
@register_method("toy_logit_l2")
class ToyLogitL2(Method):
    """Mean squared distance between student and teacher logits (Ba & Caruana 2014's loss)."""

    @dataclass
    class Config:
        scale: float = 1.0

    def forward(self, ctx):
        return self.cfg.scale * F.mse_loss(ctx.student_logits.float(), ctx.teacher_logits.float())


def test_recipe_a_method_registered_outside_trains_one_epoch(tmp_path):
    assert ToyLogitL2.name == "toy_logit_l2" and "toy_logit_l2" in METHODS  # the one spelling
    cfg = _cfg(tmp_path, teacher={"model": "mlp", "kwargs": {"hidden": [16]}},
               method={"name": "toy_logit_l2", "weight": 0.5, "scale": 2.0})
    res = run_experiment(cfg, log=lambda line: None)
    assert res["method"] == ["0.5*toy_logit_l2", "1*ce"]
    row = _rows(res["run_dir"])[-1]
    # the epoch's logged total is the sum of its weighted terms
    assert row["train_loss"] == pytest.approx(row["train_loss_toy_logit_l2"] + row["train_loss_ce"], rel=1e-5)
    assert row["train_loss_toy_logit_l2"] > 0
    with pytest.raises(ConfigError, match="'scale' must be float, got 'big'"):
        _cfg(tmp_path, method={"name": "toy_logit_l2", "scale": "big"})


# -- recipe 2: a dataset source -------------------------------------------------------------
@register_dataset("toy_parity")
def toy_parity(root: str | None = None, n: int = 96, bits: int = 6, seed: int = 0) -> DataSplits:
    """Random bit vectors labelled by the parity of their first two bits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, bits), generator=g).float()
    y = (x[:, 0].long() + x[:, 1].long()) % 2
    cut = n * 3 // 4
    return DataSplits(ArrayDataset(x[:cut], y[:cut], 2, "toy_parity"), ArrayDataset(x[cut:], y[cut:], 2, "toy_parity-test"))


def test_recipe_a_dataset_source_registered_outside_trains_one_epoch(tmp_path):
    splits = load_dataset("toy_parity", n=96)
    assert len(splits.train) == 72 and splits.train.input_shape == (6,) and splits.num_classes == 2
    cfg = _cfg(tmp_path, data={"name": "toy_parity", "options": {"n": 96}, "batch_size": 16}, method={"name": "ce"})
    res = run_experiment(cfg, log=lambda line: None)
    assert res["dataset"]["train"] == 72 and res["dataset"]["test"] == 24 and res["dataset"]["num_classes"] == 2
    assert res["dataset"]["fingerprint"] == splits.train.fingerprint()  # the same samples, read through the protocol
    assert res["steps"] == 5  # ceil(72 / 16) optimizer steps in the epoch


class StreamedParity:
    """A streamed toy source: no arrays in memory; every sample is computed from its index
    when read (as a stream decodes it), and it brings its own loader. It has exactly the
    members the Dataset protocol declares, so a run that works on it needs nothing else."""

    def __init__(self, n: int, bits: int, offset: int, name: str, index=None, lut=None, num_classes: int = 2):
        self.n, self.bits, self.offset, self.name = n, bits, offset, name
        self.rows = torch.arange(n) if index is None else index  # which generated samples, in order
        self.lut, self.num_classes = lut, num_classes

    def _make(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        seeds = self.rows[index] + self.offset
        x = torch.stack([torch.randint(0, 2, (self.bits,), generator=torch.Generator().manual_seed(int(s))).float()
                         for s in seeds]) if len(seeds) else torch.empty(0, self.bits)
        y = (x[:, 0].long() + x[:, 1].long()) % 2
        return {"x": x, "y": self.lut[y] if self.lut is not None else y, "index": index}

    def __len__(self):
        return len(self.rows)

    @property
    def input_shape(self):
        return (self.bits,)

    @property
    def class_names(self):
        return None

    @property
    def resident(self):
        return False

    def fingerprint(self):
        return f"streamed-parity-{self.offset}-{self.rows.tolist()}"

    def take(self, index):
        return self._make(index)

    def labels(self):
        return self._make(torch.arange(len(self)))["y"]

    def example(self, n=2):
        return self._make(torch.arange(min(n, len(self))))["x"]

    def batches(self, batch_size):
        for i in range(0, len(self), batch_size):
            yield self._make(torch.arange(i, min(i + batch_size, len(self))))

    def select(self, index):
        return StreamedParity(self.n, self.bits, self.offset, self.name, self.rows[index], self.lut, self.num_classes)

    def relabel(self, lut, num_classes):
        return StreamedParity(self.n, self.bits, self.offset, self.name, self.rows, lut, num_classes)

    def validate(self, require_labels=True):
        if len(self) == 0:
            raise DataError(f"{self.name}: empty")

    def concat(self, other):
        raise DataError(f"{self.name}: a stream joins no transfer set")

    def loader(self, batch_size, *, shuffle=True, seed=0, device="cpu", drop_last=False, augment=None, rank=0,
               world=1, views=None):
        return StreamedParityLoader(self, batch_size, shuffle, seed, device)


class StreamedParityLoader:
    def __init__(self, data, batch_size, shuffle, seed, device):
        self.data, self.batch_size, self.shuffle, self.seed, self.device = data, batch_size, shuffle, seed, device
        self.epochs_read: list[int] = []

    def __len__(self):
        return -(-len(self.data) // self.batch_size)

    def iterate(self, epoch, start=0):
        self.epochs_read.append(epoch)
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(len(self.data), generator=g) if self.shuffle else torch.arange(len(self.data))
        for b in range(start, len(self)):
            batch = self.data.take(order[b * self.batch_size : (b + 1) * self.batch_size])
            yield {k: v.to(self.device) for k, v in batch.items()}


@register_dataset("toy_streamed_parity")
def toy_streamed_parity(root: str | None = None, n: int = 96, bits: int = 6) -> DataSplits:
    cut = n * 3 // 4
    return DataSplits(StreamedParity(cut, bits, 0, "toy_streamed"), StreamedParity(n - cut, bits, 10_000, "toy_streamed-test"))


def _protocol_members() -> set[str]:
    from kdistill.data import Dataset

    return {m for m in dir(Dataset) if not m.startswith("_")} | set(Dataset.__annotations__) | {"__len__"}


def test_recipe_a_streamed_source_with_its_own_loader_trains_with_subset_and_split(tmp_path):
    own = {m for m in vars(StreamedParity) if not m.startswith("_") or m == "__len__"} | {"name", "num_classes"}
    assert own == _protocol_members()  # the toy has the protocol's members and no others
    cfg = _cfg(tmp_path, data={"name": "toy_streamed_parity", "options": {"n": 96}, "batch_size": 16,
                               "subset": 60, "val_split": 0.25},
               teacher={"model": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}}, method={"name": "kd"})
    res = run_experiment(cfg, log=lambda line: None)
    # data.subset then data.val_split, through select: 60 samples, 15 of them held out
    assert res["dataset"]["train"] == 45 and res["dataset"]["val"] == 15 and res["dataset"]["test"] == 24
    assert res["steps"] == 3  # ceil(45 / 16) batches of its own loader
    assert "val" in res["final"] and 0 <= res["final"]["val"]["acc"] <= 1


def test_every_dataset_class_has_every_protocol_member():
    from kdistill.data import ArrayDataset, ImageSet
    from kdistill.data.tokens import TokenDataset
    from kdistill.data.torchdata import TorchDataset

    members = _protocol_members() - {"name", "num_classes"}  # instance attributes
    assert {"validate", "concat", "select", "loader", "take"} <= members
    for cls in (ArrayDataset, ImageSet, TokenDataset, TorchDataset):
        missing = sorted(m for m in members if not hasattr(cls, m))
        assert missing == [], f"{cls.__name__} lacks {missing}"
    # subset and split are free functions over select, spelled once
    for cls in (ArrayDataset, ImageSet, TokenDataset):
        assert not hasattr(cls, "subset") and not hasattr(cls, "split")


# -- recipe 3: a scheme ---------------------------------------------------------------------
@register_scheme("toy_two_steps")
class ToyTwoSteps(Scheme):
    """A network trained from scratch, then the run's student distilled from it."""

    class Config(SchemeConfig):
        teacher_hidden: int = 16

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        from kdistill.config import ModelConfig, TeacherConfig

        big = ModelConfig(model="mlp", kwargs={"hidden": [s.teacher_hidden]})
        first = ctx.run_step("teacher", big, train=ctx.scratch_train())
        teacher = TeacherConfig(model="mlp", kwargs=big.kwargs, checkpoint=model_path(first))
        second = ctx.run_step("student", ctx.cfg.student, teacher)
        return {"stages": {"teacher": summary(first), "student": summary(second)}}


def test_recipe_a_scheme_registered_outside_trains_one_epoch(tmp_path):
    cfg = _cfg(tmp_path, scheme={"name": "toy_two_steps", "teacher_hidden": 12})
    res = run_scheme(cfg, log=lambda line: None)
    assert res["scheme"] == "toy_two_steps" and res["settings"] == {"teacher_hidden": 12}
    assert list(res["stages"]) == ["teacher", "student"]
    run = Path(res["run_dir"])
    student = json.loads((run / "student" / "results.json").read_text())
    assert student["teacher"]["checkpoint"] == str(run / "teacher" / "model.safetensors")
    assert [r["epoch"] for r in _rows(run / "student")] == [0]
    with pytest.raises(ConfigError, match="has no setting 'teacher_hiden'"):
        run_scheme(_cfg(tmp_path, scheme={"name": "toy_two_steps", "teacher_hiden": 1}), log=lambda line: None)


# -- recipe 4: a teacher kind ---------------------------------------------------------------
@dataclass
class ToyWideOptions:
    width: int = 16


@register_teacher_kind("toy_wide_mlp", options=ToyWideOptions)
def toy_wide_mlp(options: ToyWideOptions, ctx: TeacherContext):
    """A one-hidden-layer MLP of ``width`` units, trained first in the run folder."""
    model = ctx.build_model("mlp", {"hidden": [options.width]})
    ctx.train(model)
    return ModuleTeacher(model, ctx.data.num_classes), {"width": options.width}


def test_recipe_a_teacher_kind_registered_outside_trains_one_epoch(tmp_path):
    cfg = _cfg(tmp_path, teacher={"kind": "toy_wide_mlp", "options": {"width": 24}}, method={"name": "kd"})
    res = run_experiment(cfg, log=lambda line: None)
    assert res["teacher"]["kind"] == "toy_wide_mlp" and res["teacher"]["width"] == 24
    saved = json.loads((Path(res["run_dir"]) / "teacher" / "results.json").read_text())
    assert saved["params"] == 16 * 24 + 24 + 24 * 3 + 3  # the kind's own network was trained and saved
    assert 0 <= res["teacher"]["metrics"]["test"]["acc"] <= 1
    for bad, msg in (({"kind": "toy_wide_mlp", "options": {"width": "wide"}}, "'width' must be int"),
                     ({"kind": "toy_wide_mlp", "options": {"widht": 3}}, "no setting 'widht'"),
                     ({"kind": "toy_wide", "options": {}}, "unknown teacher kind 'toy_wide'"),
                     ({"kind": "toy_wide_mlp", "model": "mlp"}, "takes its settings in teacher.options")):
        with pytest.raises(ConfigError, match=msg):
            _cfg(tmp_path, teacher=bad)
    # the default kind is the model / ensemble / cache section, as before
    assert _cfg(tmp_path, teacher={"model": "mlp"}).teacher.kind == "default"


# -- one training step ----------------------------------------------------------------------
def test_train_step_is_the_step_fit_runs(tmp_path):
    """An epoch of ``Trainer.train_step`` calls (what ``kdistill bench`` times) ends with
    bit-identical weights to ``Trainer.fit`` over the same epoch."""
    data = load_dataset("synthetic", n_train=64, n_test=16, input_shape=[1, 4, 4], num_classes=3)
    cfg = TrainConfig(epochs=1, device="cpu", optimizer="sgd", lr=0.1, deterministic=True, progress=False)

    def trainer(name: str) -> Trainer:
        torch.manual_seed(0)
        d = create("ce", create_model("mlp", 3, (1, 4, 4), hidden=[8]))
        return Trainer(d, data.train, {"test": data.test}, cfg, tmp_path / name, batch_size=16, log=lambda line: None)

    fitted = trainer("fit")
    fitted.fit()
    stepped = trainer("steps")
    stepped.prepare()
    stepped.model.train()
    batches = list(stepped.loader.iterate(0))
    for i, batch in enumerate(batches):
        assert stepped.train_step(batch, step=i, total=len(batches)) is not None
    stepped.release()
    a, b = fitted.distiller.student.state_dict(), stepped.distiller.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- the layers -----------------------------------------------------------------------------
def test_import_layers_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_no_dataset_array_access_outside_data():
    """Data is read through the Dataset protocol: no ``.x`` outside ``src/kdistill/data``."""
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for p in sorted(SRC.rglob("*.py")) if "data" not in p.relative_to(SRC).parts[:1]
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\.x\b", line)]
    assert hits == []


def test_register_method_refuses_a_second_spelling():
    with pytest.raises(ValueError, match="says name='other'"):
        @register_method("toy_misnamed")
        class Misnamed(Method):
            name = "other"

    assert "toy_misnamed" not in METHODS


def test_method_settings_are_type_checked_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student: {model: mlp}\nmethod: {name: kd, temperature: '4'}\n")
    with pytest.raises(ConfigError, match=r"method: Method 'kd': setting 'temperature' must be float \| None, got '4'"):
        load_config(path)
    path.write_text("student: {model: mlp}\nmethod: {name: kd, temperature: 4}\n")  # an int is a float
    assert load_config(path).method["temperature"] == 4


def test_the_recipes_in_architecture_md_run_as_printed():
    """Every ```python block of docs/ARCHITECTURE.md runs and registers what it says."""
    from kdistill.data import DATASETS
    from kdistill.schemes import SCHEMES
    from kdistill.teachers import TEACHER_KINDS

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 5
    for code in blocks:
        exec(compile(code, "ARCHITECTURE.md", "exec"), {})
    assert "logit_l2" in METHODS and "parity" in DATASETS and "two_steps" in SCHEMES and "wide_mlp" in TEACHER_KINDS
    from kdistill.task import TASKS

    assert "regression" in TASKS
    assert len(load_dataset("parity", n=40).train) == 30
