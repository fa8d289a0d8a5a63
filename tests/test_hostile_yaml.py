"""Config files are shared: hostile YAML is refused within limits, naming the limit hit
(issue 15, item 5), and no document makes reading a config raise anything but ConfigError."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.cli import main
from kdistill.config import MAX_DEPTH, MAX_VALUES, dump_config, load_config, parse_yaml, validate_config
from kdistill.errors import ConfigError


def _laughs(levels: int, fan: int = 10, where: str = "data") -> str:
    """Billion laughs: each anchor repeats the previous one ``fan`` times (fan**levels leaves)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    body = "\n".join("    " + line for line in lines)
    if where == "data":
        return f"data:\n  name: synthetic\n  options:\n{body}\nstudent: {{model: mlp}}\n"
    return f"student:\n  model: mlp\n  kwargs:\n{body}\n"


HOSTILE = {
    # the documents, and the limit each must name
    "deep list": ("student: " + "[" * 5000 + "]" * 5000, "nests deeper than"),
    "deep data.options": ("student: {model: mlp}\ndata: {options: {x: " + "{a: " * 300 + "1" + "}" * 301 + "}",
                          "nests deeper than"),
    "deep method.temperature": ("student: {model: mlp}\nmethod: {name: kd, temperature: " + "[" * 400 + "]" * 400
                                + "}", "nests deeper than"),
    "deep teacher.train": ("student: {model: mlp}\nteacher: {model: mlp, train: " + "{a: " * 600 + "1" + "}" * 600
                           + "}", "nests deeper than"),
    "self anchor": ("student: &s {model: mlp, kwargs: {self: *s}}", "refers to itself at student.kwargs.self"),
    "5000-digit int": ("student: {model: mlp, kwargs: {x: 1" + "0" * 5000 + "}}", "integer of 5,001 digits"),
    "quoted-free huge int via --set style": ("train: {seed: " + "9" * 30 + "}\nstudent: {model: mlp}",
                                             "integer of 30 digits"),
    "laughs 10^6 in data.options": (_laughs(5), f"more than {MAX_VALUES:,} values"),
    "laughs 10^6 in student.kwargs": (_laughs(5, where="student"), f"more than {MAX_VALUES:,} values"),
    "laughs 10^9": (_laughs(8), f"more than {MAX_VALUES:,} values"),
    "huge string": ("student: {model: mlp, kwargs: {s: " + "x" * 70_000 + "}}", "70,000 characters"),
    "python tag": ("student: !!python/object/apply:os.system ['touch /tmp/x']", "not valid YAML"),
    "binary tag": ("student: {model: mlp, kwargs: {b: !!binary aGVsbG8=}}", "holds a bytes value"),
    "empty !!int": ("!!int ", "cannot be read as a config: IndexError"),
    "set": ("student: {model: mlp, kwargs: {s: !!set {a: null}}}", "holds a set value"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_config_is_one_message_naming_the_limit(tmp_path, capsys, name):
    text, limit = HOSTILE[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=limit):
        load_config(path)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_limits_leave_real_configs_alone(tmp_path):
    nested = {"a": 1}
    for _ in range(MAX_DEPTH - 6):
        nested = {"a": nested}
    doc = {"student": {"model": "mlp"}, "data": {"name": "synthetic", "options": {"deep": nested}}}
    cfg = validate_config(parse_yaml(yaml.safe_dump(doc), "ok"))
    assert yaml.safe_load(dump_config(cfg))["data"]["options"]["deep"] == nested
    # aliases are fine while they stay small: 10 x 10 leaves
    cfg = validate_config(parse_yaml(_laughs(1), "small"))
    assert len(cfg.data.options["a1"]) == 10


def test_set_overrides_are_bounded_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student: {model: mlp}\n")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_config(path, ["data.options.x=" + "[" * 100 + "]" * 100])
    with pytest.raises(ConfigError, match="integer"):
        load_config(path, ["train.seed=" + "9" * 40])
    assert load_config(path, ["output.name=a: b: c"]).output.name == "a: b: c"  # not YAML: the text as given


# -- fuzzing -------------------------------------------------------------------------------
YAML_CHARS = st.sampled_from(list("[]{}:,-&*!|>'\"#%@?` \n\t.09aezmlp_"))
TOKENS = st.sampled_from(["\n  ", "&a ", "*a", "!!", "<<: ", "student: ", "model: ", "mlp", "[", "]", "{", "}", ", ",
                          "\n", "- ", "kwargs: ", "!!python/name:os.system", "!!int ", "1e999", "? ", "|", "'", '"'])
fragments = st.one_of(
    st.text(YAML_CHARS, max_size=120),
    st.lists(TOKENS, max_size=40).map("".join),
    st.builds(lambda d: "student: " + "[" * d + "]" * d, st.integers(0, 3 * MAX_DEPTH)),
    st.builds(lambda d, w: f"student: {{model: mlp, kwargs: {{x: {'{a: ' * d}1{'}' * d}}}}}\n" + w,
              st.integers(0, 2 * MAX_DEPTH), st.text(YAML_CHARS, max_size=20)),
    st.builds(lambda n, f: _laughs(n, f), st.integers(0, 7), st.integers(1, 12)),
    st.builds(lambda n: "student: {model: mlp}\ntrain: {seed: " + "9" * n + "}", st.integers(1, 6000)),
    st.builds(lambda s: "student: &s {model: mlp, kwargs: {k: " + s + "}}", st.sampled_from(["*s", "[*s]", "1"])),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(), st.text(max_size=8))
keys = st.sampled_from(["data", "teacher", "student", "method", "train", "output", "model", "kwargs", "options",
                        "epochs", "seed", "name", "temperature", "train", "x"])
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


def _read(text: str) -> None:
    try:
        cfg = validate_config(parse_yaml(text, "fuzz") or {})
    except ConfigError:
        return
    dump_config(cfg)  # a config that validates also writes back (the run folder's config.yaml)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fragments)
def test_fuzzed_yaml_text_only_raises_config_error(text):
    _read(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_fuzzed_yaml_documents_only_raise_config_error(doc):
    _read(yaml.safe_dump(doc))
