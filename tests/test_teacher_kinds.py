"""Teacher kinds are first-class: the default kind is an ordinary registered kind, and
--check, compare's teacher sharing, the record's label, the epochs check and `kdistill eval`
ask the kind's hooks; a kind registered outside the package gets the same service."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import kdistill
from kdistill.config import validate_config
from kdistill.errors import ConfigError
from kdistill.evaluate import _configured_teacher
from kdistill.runs import TeacherContext, prepare_data
from kdistill.runs.grid import image_reuse_teacher as _reuse_teacher
from kdistill.runs.grid import plan_methods, teacher_key
from kdistill.runs.preflight import check_epochs, preflight
from kdistill.teachers import TEACHER_KINDS, ModuleTeacher, register_teacher_kind

SRC = Path(kdistill.__file__).parent
TINY = {"name": "synthetic", "options": {"n_train": 64, "n_test": 32, "input_shape": [6], "num_classes": 3},
        "batch_size": 16}


@dataclass
class HookedOptions:
    width: int = 8


calls: dict[str, int] = {}


def _note(name):
    calls[name] = calls.get(name, 0) + 1


def _net(ctx_or_data, width, trust=False):
    from kdistill.runs import build_model

    return build_model("mlp", {"hidden": [width]}, ctx_or_data, None, trust, "teacher")


def _hook_preflight(cfg, data, trust, lines):
    _note("preflight")
    lines.append(f"teacher: hooked mlp of width {cfg.teacher.options['width']}")
    return ModuleTeacher(_net(data, cfg.teacher.options["width"]), data.num_classes), []


def _hook_share_key(cfg, mode):
    _note("share_key")
    return f"hooked-{cfg.teacher.options['width']}-{cfg.train.seed if mode == 'per-seed' else 'all'}"


def _hook_reuse(cfg, shared):
    _note("reuse")
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"options": {"width": shared}})})


def _hook_from_checkpoints(cfg, data, trust, source):
    _note("from_checkpoints")
    return ModuleTeacher(_net(data, cfg.teacher.options["width"]), data.num_classes)


@register_teacher_kind("toy_hooked", options=HookedOptions, preflight=_hook_preflight, untrained=lambda cfg: True,
                       share_key=_hook_share_key, shared=lambda cell_dir, cfg: 99, reuse=_hook_reuse,
                       from_checkpoints=_hook_from_checkpoints)
def toy_hooked(options: HookedOptions, ctx: TeacherContext):
    return ModuleTeacher(ctx.build_model("mlp", {"hidden": [options.width]}), ctx.data.num_classes)


def _cfg(tmp_path, teacher, **train):
    return validate_config({"data": TINY, "student": {"model": "mlp", "kwargs": {"hidden": [4]}},
                            "teacher": teacher, "method": {"name": "kd"},
                            "train": {"epochs": 1, "progress": False} | train, "output": {"dir": str(tmp_path)}})


def test_the_default_kind_is_an_ordinary_registered_kind_with_every_hook():
    kind = TEACHER_KINDS.get("default")
    assert kind.build.__module__ == "kdistill.runs.default_teacher"
    for hook in ("preflight", "untrained", "share_key", "shared", "reuse", "from_checkpoints"):
        assert callable(getattr(kind, hook)), hook
    assert kind.labelled is False  # its records stay the model / ensemble / cache records


def test_no_caller_names_the_default_kind():
    for name in ("runs/preflight.py", "runs/grid.py", "evaluate.py", "teachers.py", "runs/experiment.py"):
        text = (SRC / name).read_text()
        assert not re.search(r"""kind\s*[!=]=\s*["']default["']|["']default["']\s*[!=]=""", text), name
        assert 'name != "default"' not in text, name


def test_check_builds_a_hooked_kinds_teacher_and_runs_the_method_on_it(tmp_path):
    calls.clear()
    lines = []
    checked = preflight(_cfg(tmp_path, {"kind": "toy_hooked", "options": {"width": 5}}), log=lines.append)
    assert calls["preflight"] == 1 and checked.data is not None
    assert any("hooked mlp of width 5" in line for line in lines)


def test_a_kind_without_hooks_is_made_when_the_run_starts(tmp_path):
    @register_teacher_kind("toy_plain")
    def toy_plain(options, ctx):
        raise AssertionError("not called by a check")

    lines = []
    preflight(_cfg(tmp_path, {"kind": "toy_plain"}), log=lines.append)
    assert any("kind 'toy_plain', made when the run starts" in line for line in lines)
    assert teacher_key(plan_methods(_cfg(tmp_path, {"kind": "toy_plain"}), ["kd"], [0])[1], "per-seed") is None


def test_compare_shares_a_hooked_kinds_teacher_through_its_hooks(tmp_path):
    calls.clear()
    cells = plan_methods(_cfg(tmp_path, {"kind": "toy_hooked", "options": {"width": 7}}), ["kd"], [0, 1])
    keys = {c.name: teacher_key(c, "per-seed") for c in cells}
    assert keys["kd-s0"] == "hooked-7-0" and keys["kd-s1"] == "hooked-7-1"
    assert len({teacher_key(c, "shared") for c in cells if c.group != "scratch"}) == 1
    assert _reuse_teacher(cells[1].cfg, 99).teacher.options == {"width": 99} and calls["reuse"] == 1


def test_the_epochs_check_asks_the_kind(tmp_path):
    with pytest.raises(ConfigError, match="teacher.train.epochs is 0"):
        check_epochs(_cfg(tmp_path, {"kind": "toy_hooked", "train": {"epochs": 0}}))
    # the default kind with a checkpoint trains nothing: no complaint
    check_epochs(_cfg(tmp_path, {"model": "mlp", "checkpoint": "t.safetensors", "train": {"epochs": 0}}))
    with pytest.raises(ConfigError, match="teacher.train.epochs is 0"):
        check_epochs(_cfg(tmp_path, {"model": "mlp", "train": {"epochs": 0}}))


def test_eval_finds_a_configured_teacher_through_its_kind(tmp_path):
    calls.clear()
    cfg = _cfg(tmp_path, {"kind": "toy_hooked", "options": {"width": 6}})
    net = _configured_teacher(cfg, prepare_data(cfg), True, tmp_path)
    assert calls["from_checkpoints"] == 1 and net.head.in_features == 6
    plain = _cfg(tmp_path, {"model": "mlp"})  # default kind, no checkpoint: nothing trained to evaluate
    assert _configured_teacher(plain, prepare_data(plain), True, tmp_path) is None
