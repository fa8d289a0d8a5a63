"""Configs are validated before anything runs, with messages that name the key."""

import pytest

from kdistill.config import load_config, parse_override, validate_config
from kdistill.errors import ConfigError

BASE = {"student": {"model": "mlp"}}


def test_defaults_and_override_parsing(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("student: {model: mlp}\nteacher: {model: cnn1d}\n")
    cfg = load_config(p, ["method.temperature=8", "train.epochs=3", "data.subset=100"])
    assert cfg.method == {"name": "kd", "temperature": 8}
    assert cfg.train.epochs == 3 and cfg.data.subset == 100
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError) as e:
        validate_config(BASE | {"train": {"epoch": 3}})
    assert "train.epoch" in str(e.value) and "Did you mean 'epochs'" in str(e.value)


def test_unknown_section_names_closest():
    with pytest.raises(ConfigError, match="Did you mean 'teacher'"):
        validate_config(BASE | {"teachr": {"model": "mlp"}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.lr"):
        validate_config(BASE | {"train": {"lr": "fast"}})


def test_unknown_method_and_setting():
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*Did you mean 'kd'"):
        validate_config(BASE | {"method": {"name": "kdd"}})
    with pytest.raises(ConfigError, match="temprature.*Did you mean 'temperature'"):
        validate_config(BASE | {"method": {"name": "kd", "temprature": 3}})


def test_teacher_needs_a_kind():
    with pytest.raises(ConfigError, match="teacher"):
        validate_config(BASE | {"teacher": {}})


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["nonsense"], base=BASE)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_leave_the_callers_base_untouched():
    from kdistill.config import read_raw_config

    base = {"data": {"name": "synthetic", "options": {"n_train": 64}}, "train": {"epochs": 1}}
    raw = read_raw_config(None, ["data.options.n_train=8", "train.epochs=3"], base=base)
    assert raw["data"]["options"]["n_train"] == 8 and raw["train"]["epochs"] == 3
    assert base == {"data": {"name": "synthetic", "options": {"n_train": 64}}, "train": {"epochs": 1}}
