"""Experiment tracking: TensorBoard receives every epoch row and the config as hyperparameters."""

import json

import pytest

from kdistill.config import validate_config
from kdistill.runs import run_experiment

pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install -e '.[dev]')")


def test_tensorboard_gets_epoch_metrics_and_hparams(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = validate_config(tiny_cfg(train={"epochs": 3, "log_with": ["tensorboard"]}, teacher=None,
                                   method={"name": "ce"}))
    run_experiment(cfg, tmp_path / "r", log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    event_dirs = {p.parent for p in (tmp_path / "r" / "trackers").rglob("events.out.tfevents*")}
    scalars = {}
    for d in event_dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [v for _, v in scalars["test_acc"]] == pytest.approx([r["test_acc"] for r in rows])
    assert [s for s, _ in scalars["test_acc"]] == [r["step"] for r in rows]
    import yaml

    hparams = yaml.safe_load(next((tmp_path / "r" / "trackers").rglob("hparams.yml")).read_text())
    assert hparams["train.epochs"] == 3 and hparams["method.name"] == "ce" and hparams["student.model"] == "mlp"


def test_unknown_tracker_is_a_config_error(tiny_cfg):
    from kdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="log_with"):
        validate_config(tiny_cfg(train={"log_with": ["wandb"]}))
