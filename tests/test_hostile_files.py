"""Every file kdistill reads may be hostile; every mistake is one line (issue 24).

Each case plants one hostile file (a tampered record, a device or FIFO where a file should
be, a decompression bomb, a cache another teacher wrote, a Hugging Face folder with its own
Python and ``y`` on stdin, ...) and asserts one ``error:`` line or a counted skip, no
traceback, no code run (a marker file), no hang (subprocess timeouts) and bounded memory
(the peak RSS of a subprocess). The number of cases is :data:`HOSTILE_CASES` (checked at
the end, so a removed case is noticed).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdistill.cli import main
from kdistill.errors import DataError, KdistillError

SRC = str(Path(__file__).resolve().parents[1] / "src")
CFG = {
    "data": {"name": "synthetic", "options": {"num_classes": 3, "input_shape": [12], "n_train": 96, "n_test": 48},
             "batch_size": 32},
    "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "ce"},
    "train": {"epochs": 1, "lr": 0.01, "deterministic": True, "progress": False},
}
COUNTED: list[str] = []  # the hostile cases that ran, for the closing count
SKIPPED_CASES: list[str] = []  # cases this machine cannot run (no tmpfs mount)


def _one_error(capsys, argv, code=None) -> str:
    """Run the CLI in-process; assert one ``error:`` line, no traceback, a non-zero exit."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 if code is None else rc == code, (rc, err)
    assert err.count("error:") == 1 and "Traceback" not in err, err
    return err


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _cli_subprocess(args, cwd, stdin: str = "", timeout: float = 120) -> tuple[int, str, float]:
    """``kdistill ARGS`` in a fresh process: exit code, stderr, peak RSS in MiB."""
    code = ("import resource, sys\nfrom kdistill.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                       timeout=timeout, env=env)
    rss = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("MAXRSS")]
    return p.returncode, p.stderr, float(rss[0]) if rss else float("nan")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "run")]) == 0
    return tmp


def _copy(run, tmp_path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(run / "run", bad)
    return bad


# ---- records kdistill wrote, tampered ---------------------------------------------------

DEEP = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
RECORDS = {
    "deep": DEEP,
    "list": "[1, 2, 3]",
    "not-json": "model: mlp",
    "1e12-classes": json.dumps({"model": "mlp", "num_classes": 10**12, "input_shape": [12], "kwargs": {}}),
    "shape-strings": json.dumps({"model": "mlp", "num_classes": 3, "input_shape": ["a"], "kwargs": {}}),
    "kwargs-list": json.dumps({"model": "mlp", "num_classes": 3, "input_shape": [12], "kwargs": [1]}),
    "invalid-utf8": b'{"model": "\xff\xfe"}',
}


@pytest.mark.parametrize("case", sorted(RECORDS))
def test_a_tampered_model_json_is_one_line(run, tmp_path, capsys, case):
    bad = _copy(run, tmp_path)
    text = RECORDS[case]
    (bad / "model.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    err = _one_error(capsys, ["eval", str(bad)])
    assert "model.json" in err
    COUNTED.append(f"model.json {case}")


@pytest.mark.parametrize("case", ["dev-zero", "fifo", "sparse-100mb"])
def test_model_json_that_is_no_file_is_refused_without_reading(run, tmp_path, case):
    bad = _copy(run, tmp_path)
    (bad / "model.json").unlink()
    if case == "dev-zero":
        os.symlink("/dev/zero", bad / "model.json")
    elif case == "fifo":
        os.mkfifo(bad / "model.json")
    else:
        with open(bad / "model.json", "wb") as f:
            f.truncate(100 << 20)
    rc, err, rss = _cli_subprocess(["eval", str(bad)], tmp_path, timeout=120)  # a FIFO would hang here
    assert rc != 0 and err.count("error:") == 1 and "Traceback" not in err, err
    assert ("not a file" in err) if case != "sparse-100mb" else ("MiB" in err)
    assert rss < 1500, rss  # /dev/zero read whole would exhaust memory
    COUNTED.append(f"model.json {case}")


def test_results_json_tampered_is_one_line_for_the_report_reader(run, tmp_path):
    from kdistill.report.tables import RunFolderError, load_run

    bad = _copy(run, tmp_path)
    for i, text in enumerate((DEEP, "[]", '{"final": [1]}')):
        (bad / "results.json").write_text(text)
        with pytest.raises(RunFolderError):
            load_run(bad)
        COUNTED.append(f"results.json {i}")


def test_quantize_json_not_json_or_mistyped_is_one_line(run, tmp_path):
    from kdistill.quantize.run import int8_dir, load_int8

    bad = _copy(run, tmp_path)
    folder = int8_dir(bad, "ptq")
    folder.mkdir(parents=True)
    (folder / "quantized.safetensors").write_bytes(b"")
    for i, text in enumerate(("not json", DEEP, '{"keep_float": 5}')):
        (folder / "quantize.json").write_text(text)
        with pytest.raises(KdistillError, match="quantize.json"):
            load_int8(bad)
        COUNTED.append(f"quantize.json {i}")


# ---- teacher caches (FKD) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fkd(tmp_path_factory):
    from kdistill.cache import cache_teacher
    from kdistill.data import Augment, load_dataset

    tmp = tmp_path_factory.mktemp("fkd")
    data = load_dataset("synthetic", num_classes=5, input_shape=(1, 6, 6), n_train=40, n_test=20)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5))
    cache_teacher(net, data.train, tmp / "c", views=2, augment=Augment(shift=1, flip=True), topk=3,
                  eval_sets={"test": data.test}, batch_size=16)
    return tmp, data, net


def _tamper_cache(fkd, tmp_path, case) -> Path:
    root, data, net = fkd
    c = tmp_path / "c"
    shutil.copytree(root / "c", c)
    if case == "views-object":
        np.save(c / "views.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)
    elif case == "views-out-of-range":
        v = np.load(c / "views.npy")
        v[3, 1, 0] = 99
        np.save(c / "views.npy", v)
    elif case == "indices-out-of-range":
        a = np.load(c / "topk_indices.npy")
        a[0, 0, 0] = 500
        np.save(c / "topk_indices.npy", a)
    elif case == "values-truncated":
        np.save(c / "topk_values.npy", np.load(c / "topk_values.npy")[:10])
    elif case == "values-bytes-cut":
        raw = (c / "topk_values.npy").read_bytes()
        (c / "topk_values.npy").write_bytes(raw[: len(raw) // 2])
    elif case == "meta-deep":
        (c / "meta.json").write_text(DEEP)
    elif case == "meta-1e12-classes":
        meta = json.loads((c / "meta.json").read_text())
        (c / "meta.json").write_text(json.dumps(meta | {"num_classes": 10**12}))
    elif case == "meta-list":
        (c / "meta.json").write_text("[]")
    return c


FKD_CASES = ["views-object", "views-out-of-range", "indices-out-of-range", "values-truncated", "values-bytes-cut",
             "meta-deep", "meta-1e12-classes", "meta-list"]


@pytest.mark.parametrize("case", FKD_CASES)
def test_a_tampered_teacher_cache_is_refused(fkd, tmp_path, case):
    from kdistill.cache import CachedTeacher

    c = _tamper_cache(fkd, tmp_path, case)
    with pytest.raises(DataError) as e:
        CachedTeacher.open(c, fkd[1].train, num_classes=5)
    assert str(c) in str(e.value)
    COUNTED.append(f"fkd {case}")


def test_the_untampered_cache_opens_and_replays(fkd):
    from kdistill.cache import CachedTeacher

    root, data, net = fkd
    t = CachedTeacher.open(root / "c", data.train, num_classes=5, teacher=net)
    assert t.views is not None and t.views.params.shape == (40, 2, 3)


def test_a_cache_another_teacher_wrote_is_refused(fkd):
    from kdistill.cache import CachedTeacher

    root, data, net = fkd
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5))
    with pytest.raises(DataError, match="teacher fingerprint"):
        CachedTeacher.open(root / "c", data.train, num_classes=5, teacher=other)
    COUNTED.append("fkd other teacher")


def test_the_run_path_checks_the_teacher_fingerprint(fkd, tmp_path, capsys, monkeypatch):
    """``kdistill train`` with ``teacher.cache`` and the teacher's checkpoint: the cache of
    another teacher is one error line."""
    from safetensors.torch import save_file

    root, data, net = fkd
    (tmp_path / "tnet.py").write_text(
        "from torch import nn\n\ndef make(num_classes, input_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(36, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    cfg = {"data": {"name": "synthetic", "options": {"num_classes": 5, "input_shape": [1, 6, 6], "n_train": 40,
                                                      "n_test": 20}, "batch_size": 16},
           "teacher": {"cache": str(root / "c"), "model": "tnet:make", "checkpoint": str(tmp_path / "other.safetensors")},
           "student": {"model": "mlp", "kwargs": {"hidden": [8]}}, "method": {"name": "kd"},
           "train": {"epochs": 1, "progress": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")])
    assert "teacher fingerprint" in err
    COUNTED.append("fkd other teacher via train")


def test_a_killed_cache_teacher_leaves_nothing_after_the_next_start(fkd, tmp_path):
    from kdistill.cache import cache_teacher

    root, data, net = fkd
    pid = _dead_pid()
    litter = tmp_path / f".c2.{pid}.abcd1234.tmp"
    litter.mkdir()
    (litter / "logits.npy").write_bytes(b"half")
    cache_teacher(net, data.train, tmp_path / "c2", batch_size=16)
    assert not litter.exists() and (tmp_path / "c2" / "meta.json").is_file()
    COUNTED.append("cache-teacher litter")


# ---- the LM top-k cache -----------------------------------------------------------------

LM_META = {"format": "kdistill-lm-topk/1", "k": 2, "vocab": 10, "rows": 4, "block": 3, "teacher": "t",
           "tokenizer": "k", "data": "d", "index_dtype": "int16"}


@pytest.mark.parametrize("case", ["short-rows", "indices-out-of-vocab", "object-array", "float-indices",
                                  "meta-k-string"])
def test_a_tampered_lm_cache_is_refused(tmp_path, case):
    from kdistill.cache.tokens import _checked_topk
    from kdistill.safe_read import LMCacheMeta, validate

    meta = dict(LM_META)
    values = np.zeros((4, 3, 2), np.float16)
    indices = np.ones((4, 3, 2), np.int16)
    if case == "short-rows":
        values = values[:3]
    elif case == "indices-out-of-vocab":
        indices[2, 1, 0] = 10
    elif case == "float-indices":
        indices = indices.astype(np.float32)
    elif case == "meta-k-string":
        meta["k"] = "two"
    np.save(tmp_path / "values.npy", values)
    if case == "object-array":
        np.save(tmp_path / "indices.npy", np.array([None] * 4, dtype=object), allow_pickle=True)
    else:
        np.save(tmp_path / "indices.npy", indices)
    with pytest.raises(DataError):
        validate(meta, LMCacheMeta, tmp_path / "meta.json")
        _checked_topk(tmp_path, meta)
    COUNTED.append(f"lm cache {case}")


# ---- JSONL records ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["long-line", "invalid-utf8", "ids-strings", "ids-out-of-range", "deep"])
def test_hostile_jsonl_records_are_one_line(tmp_path, case):
    from kdistill.lm.data import read_jsonl, records_dataset
    from kdistill.lm.models import ByteTokenizer

    f = tmp_path / "r.jsonl"
    if case == "long-line":
        f.write_text('{"text": "' + "a" * (17 << 20) + '"}\n')
    elif case == "invalid-utf8":
        f.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    elif case == "ids-strings":
        f.write_text('{"prompt_ids": ["1", "2"], "completion_ids": [3]}\n')
    elif case == "ids-out-of-range":
        f.write_text('{"prompt_ids": [1, 2], "completion_ids": [300]}\n')
    else:
        f.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError) as e:
        records_dataset(read_jsonl(f), ByteTokenizer(), 8, "r")
    assert "r.jsonl" in str(e.value) or "record" in str(e.value)
    COUNTED.append(f"jsonl {case}")


# ---- image folders, parquet cells, tar labels ---------------------------------------------

def _png(path: Path, colour: bool, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (8, 8, 3) if colour else (8, 8), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A PNG whose header claims ``side`` x ``side`` pixels (10^10): a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _folder(tmp_path, plant: str | None) -> Path:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            _png(root / c / f"{c}{i}.png", True, i + (10 if c == "b" else 0))
    target = root / "a" / "a0.png"  # sorts first: the probed image
    if plant:
        target.unlink()
    if plant == "dev-zero":
        os.symlink("/dev/zero", target)
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant == "bomb":
        _bomb_png(target)
    elif plant == "outside":
        _png(tmp_path / "elsewhere.png", True, 99)
        os.symlink(tmp_path / "elsewhere.png", target)
    elif plant == "empty":
        target.write_bytes(b"")
    return root


@pytest.mark.parametrize("plant", ["dev-zero", "fifo", "bomb", "outside", "empty"])
def test_a_hostile_first_image_is_a_counted_skip(tmp_path, plant):
    from kdistill.data import load_dataset

    root = _folder(tmp_path, plant)
    with pytest.warns(UserWarning, match="a0.png"):
        d = load_dataset("imagefolder", root=str(root), on_bad="skip", test_split=0.5, workers=0)
        n = sum(int(b["x"].shape[0]) for b in d.train.loader(4, seed=0).iterate(0))
    assert d.input_shape == (3, 8, 8)
    bad = [s for s in (d.train.skipped | d.test.skipped) if "a0.png" in s]
    assert len(bad) == 1 and n <= len(d.train)
    COUNTED.append(f"image {plant}")


@pytest.mark.parametrize("plant", ["dev-zero", "fifo", "bomb"])
def test_a_hostile_image_with_on_bad_fail_is_one_line_in_bounded_memory(tmp_path, plant):
    root = _folder(tmp_path, plant)
    cfg = {"data": {"name": "imagefolder", "root": str(root), "workers": 0,
                    "options": {"test_split": 0.5, "size": 8, "channels": 3}, "batch_size": 4},
           "student": {"model": "convnet2"}, "method": {"name": "ce"}, "train": {"epochs": 1, "progress": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc, err, rss = _cli_subprocess(["train", "cfg.yaml", "--run-dir", "r"], tmp_path, timeout=180)
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err and "a0.png" in err, err
    assert rss < 1500, rss
    COUNTED.append(f"image {plant} fail")


def test_a_data_option_repeating_a_data_key_is_one_line(tmp_path, capsys):
    cfg = {**CFG, "data": {**CFG["data"], "options": {**CFG["data"]["options"], "workers": 0}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")], code=2)
    assert "data.workers" in err
    COUNTED.append("data.options.workers")


def test_a_mixed_channel_folder_takes_the_majority_and_says_so(tmp_path):
    from kdistill.data import load_dataset

    root = _folder(tmp_path, None)
    for i in range(2):
        _png(root / "a" / f"a{i}.png", False, i)  # two grey images, one sorting first
    with pytest.warns(UserWarning, match=r"using 3 channel\(s\)"):
        d = load_dataset("imagefolder", root=str(root), test_split=0.5, workers=0)
    assert d.input_shape == (3, 8, 8)
    COUNTED.append("mixed channels")


@pytest.mark.parametrize("cell", ["/dev/zero", 7, [0.5, 0.25]])
def test_a_hostile_parquet_image_cell_is_a_counted_skip(tmp_path, cell):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from kdistill.data import load_dataset

    _png(tmp_path / "ok.png", True, 1)
    good = str(tmp_path / "ok.png")
    for split, n in (("train", 8), ("test", 4)):
        if isinstance(cell, str):  # a path column: the first row names a device
            col = pa.array([cell] + [good] * (n - 1), pa.string())
        else:  # a column of numbers where images belong
            col = pa.array([cell] * n)
        pq.write_table(pa.table({"image": col, "label": [i % 2 for i in range(n)]}), tmp_path / f"{split}.parquet")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        d = load_dataset("hf", root=str(tmp_path), format="parquet", on_bad="skip", size=8, channels=3, workers=0)
        list(d.train.batches(4))
    assert len(d.train.skipped) == (1 if isinstance(cell, str) else 8)
    COUNTED.append(f"parquet {cell!r}")


@pytest.mark.parametrize("label", [b"1" + b"0" * 30, b"x" * 5000, b"-7"])
def test_a_hostile_tar_label_is_one_line(tmp_path, label):
    import tarfile

    from kdistill.data import load_dataset

    _png(tmp_path / "i.png", True, 0)
    img = (tmp_path / "i.png").read_bytes()
    for split in ("train", "test"):
        with tarfile.open(tmp_path / f"{split}-0.tar", "w") as tf:
            for k in range(4):
                for ext, data in (("png", img), ("cls", label if k == 0 else str(k % 2).encode())):
                    info = tarfile.TarInfo(f"{k:04d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="label of"):
        load_dataset("webdataset", root=str(tmp_path), train="train-0.tar", test="test-0.tar")
    COUNTED.append(f"tar label {label[:4]!r}")


# ---- Hugging Face folders ---------------------------------------------------------------

def _hf_image_folder(tmp_path: Path, name: str) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=8, num_labels=3)
    folder = tmp_path / name
    transformers.ViTForImageClassification(cfg).save_pretrained(str(folder))
    return folder


def _plant_auto_map(folder: Path, marker: Path, auto: dict, file: str = "config.json") -> None:
    c = json.loads((folder / file).read_text()) if (folder / file).is_file() else {}
    if file == "config.json":
        c["model_type"] = "evilnet"  # not a model transformers knows: only the folder's code could build it
    c["auto_map"] = auto
    (folder / file).write_text(json.dumps(c))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                    "raise SystemExit('the folder code ran')\n")


def test_an_hf_model_folder_with_its_own_code_never_runs_it_even_with_y_on_stdin(tmp_path):
    folder = _hf_image_folder(tmp_path, "evil")
    marker = tmp_path / "PWNED"
    _plant_auto_map(folder, marker, {"AutoConfig": "evil.C", "AutoModelForImageClassification": "evil.M"})
    rc, err, _ = _cli_subprocess(["profile", "--model", f"hf:{folder}", "--input-shape", "3,8,8", "--no-onnx",
                                  "--repeats", "1", "--warmup", "0", "--batch-sizes", "1"],
                                 tmp_path, stdin="y\ny\ny\n", timeout=180)
    assert not marker.exists(), "the folder's Python ran"
    assert rc == 2 and err.count("error:") == 1 and "Traceback" not in err and "[y/N]" not in err, err
    assert "Failed to load" not in err  # torchao's noise is not printed
    # --trust-code is the one opt-in: then the folder's Python runs (and here stops the process)
    os.environ["HF_MODULES_CACHE"], old = str(tmp_path / "modules"), os.environ.get("HF_MODULES_CACHE")
    try:
        rc, err, _ = _cli_subprocess(["profile", "--model", f"hf:{folder}", "--input-shape", "3,8,8", "--no-onnx",
                                      "--trust-code"], tmp_path, timeout=180)
    finally:
        os.environ.pop("HF_MODULES_CACHE") if old is None else os.environ.__setitem__("HF_MODULES_CACHE", old)
    assert marker.exists(), err[-2000:]
    COUNTED.append("hf model auto_map")


def test_an_hf_tokenizer_with_its_own_code_never_runs_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from kdistill.lm.models import HFTokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    (folder / "config.json").write_text(json.dumps({"model_type": "evilnet"}))
    _plant_auto_map(folder, marker, {"AutoTokenizer": ["evil.T", None]}, "tokenizer_config.json")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 5))
    with pytest.raises(KdistillError):
        HFTokenizer(folder)
    assert not marker.exists()
    COUNTED.append("hf tokenizer auto_map")


def test_the_trust_code_opt_in_ends_with_its_command(run, capsys):
    """An earlier `eval --trust-code` in the same process must not trust a later load."""
    from kdistill.safe_read import remote_code_allowed

    assert main(["eval", str(run / "run"), "--trust-code"]) == 0
    capsys.readouterr()
    assert remote_code_allowed() is False


@pytest.mark.parametrize("kind", ["image", "causal-lm"])
def test_pickled_weights_in_an_hf_folder_are_named_and_refused(tmp_path, kind, capsys):
    from kdistill.errors import ConfigError

    folder = _hf_image_folder(tmp_path, "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        if kind == "image":
            from kdistill.models import create_model

            create_model(f"hf:{folder}", 3, (3, 8, 8))
        else:
            from kdistill.lm.models import build_causal_lm

            build_causal_lm(f"hf:{folder}", {}, 10)
    assert not marker.exists()
    COUNTED.append(f"hf pickled {kind}")


# ---- the CLI's own edges ----------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["train", "x.yaml", "--bogus"], "No such option"),
    (["train"], "Missing argument"),
    (["trian", "x.yaml"], "Did you mean 'train'"),
    (["profile", "--model", "mlp", "--repeats", "abc"], "--repeats"),
])
def test_usage_errors_are_one_line_with_the_usage_exit_2(capsys, argv, needle):
    err = _one_error(capsys, argv, code=2)
    assert needle in err and "usage:" in err and len(err.strip().splitlines()) == 1
    COUNTED.append(f"usage {argv[0]} {needle}")


# ---- writers: disk full, pruning ----------------------------------------------------------

def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        SKIPPED_CASES.append("disk full")
        pytest.skip("mounting a small tmpfs needs root (or mount is not allowed here)")
    try:
        cfg = {**CFG, "student": {"model": "mlp", "kwargs": {"hidden": [512, 512]}}}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(small / "r")], code=1)
        assert "No space left on device" in err and str(small) in err and "SafetensorError" not in err
    finally:
        subprocess.run(["umount", str(small)], check=False)
    COUNTED.append("disk full")


def test_pruning_a_checkpoint_renames_before_deleting(tmp_path, monkeypatch):
    from kdistill.engine import checkpoint as ck

    model = torch.nn.Linear(2, 2)
    for step in (1, 2):
        ck.save_checkpoint(tmp_path, "last", step, model, {})
    calls = []

    def killed_rmtree(p, ignore_errors=False):  # the kill happens while deleting
        calls.append(Path(p).name)
    monkeypatch.setattr(ck.shutil, "rmtree", killed_rmtree)
    ck.save_checkpoint(tmp_path, "last", 3, model, {}, keep=2)
    monkeypatch.undo()
    # the pruned checkpoint is no longer under its own name: resume never sees half of it
    assert [p.name for p in ck.list_checkpoints(tmp_path, "last")] == ["last-000000003", "last-000000002"]
    assert calls and calls[0].startswith(".last-000000001.") and calls[0].endswith(".tmp")
    COUNTED.append("pruning")


def test_files_kdistill_writes_follow_the_umask(run, tmp_path):
    """mkstemp's 0600 made shared run folders unreadable to colleagues."""
    from kdistill.engine.checkpoint import atomic_write_json, save_checkpoint

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
        ck = save_checkpoint(tmp_path / "ck", "last", 1, torch.nn.Linear(2, 2), {})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert ck.stat().st_mode & 0o777 == 0o755
    assert (run / "run" / "results.json").stat().st_mode & 0o044  # the run folder's records too


def test_an_interrupted_quantize_leaves_nothing_after_the_next_start(run, tmp_path):
    from kdistill.engine.checkpoint import remove_litter
    from kdistill.quantize.run import int8_dir

    bad = _copy(run, tmp_path)
    folder = int8_dir(bad, "ptq")
    folder.mkdir(parents=True)
    litter = folder / f".quantize.json.{_dead_pid()}.tmp"
    litter.write_text("{")
    assert remove_litter(folder) == [litter.name]  # quantize_run calls it on both folders first
    COUNTED.append("quantize litter")


@pytest.mark.parametrize("section,key,value", [("recipe", "flip", "yes"), ("train", "epochs", "on"),
                                               ("train", "lr", "no")])
def test_yes_no_where_a_number_belongs_is_refused(tmp_path, capsys, section, key, value):
    """YAML reads yes/on as true: ``flip: yes`` silently became probability 1.0."""
    text = yaml.safe_dump(CFG).replace("train:\n", "train:\n  PLACE\n") if section == "train" else yaml.safe_dump(CFG)
    if section == "train":
        text = text.replace(f"  {key}: {CFG['train'].get(key)}\n", "").replace("PLACE", f"{key}: {value}")
    else:
        text = text.replace("data:\n", f"data:\n  recipe:\n    {key}: {value}\n")
    (tmp_path / "cfg.yaml").write_text(text)
    err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")], code=2)
    assert f"{key} takes a number, got true" in err or f"{key} takes a number, got false" in err
    COUNTED.append(f"config {key}: {value}")


# ---- resume after SIGKILL ----------------------------------------------------------------

def test_resume_after_sigkill_finds_the_unfinished_run_of_the_config(tmp_path, capsys):
    """The README's `kdistill train CONFIG --resume` after a kill (no SIGTERM message naming
    the folder): the newest unfinished run of the same config in output.dir is continued."""
    import signal
    import time

    cfg = {**CFG, "train": {**CFG["train"], "epochs": 30},
           "output": {"dir": str(tmp_path / "runs")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "train", "cfg.yaml", "-q"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/checkpoints/last-*")):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    (run,) = list((tmp_path / "runs").iterdir())
    assert not (run / "results.json").exists()
    # another config's unfinished run beside it is not a candidate
    other = tmp_path / "runs" / run.name.replace(run.name[:15], "20000101-000000")
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 30", "epochs: 7"))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--resume", "-q"]) == 0
    out = capsys.readouterr().out
    assert (run / "results.json").is_file() and "Resuming" not in out  # -q: quiet
    assert json.loads((run / "results.json").read_text())["final"]
    # a second unfinished copy makes the choice ambiguous: refused, both named
    twin = tmp_path / "runs" / ("29991231-235959" + run.name[15:])
    twin.mkdir()
    shutil.copy(run / "config.yaml", twin / "config.yaml")
    (run / "results.json").rename(run / "results.bak")
    err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--resume"], code=2)
    assert "2 unfinished runs" in err and twin.name in err and "--run-dir" in err
    COUNTED.append("resume after kill")


def test_an_empty_and_a_truncated_image_warn_once_each_naming_the_file_and_are_not_scored(tmp_path, recwarn):
    from kdistill.data import load_dataset
    from kdistill.metrics import classification_metrics, predict_logits

    root = _folder(tmp_path, "empty")
    raw = (root / "b" / "b5.png").read_bytes()
    (root / "b" / "b5.png").write_bytes(raw[: len(raw) // 2])  # truncated
    d = load_dataset("imagefolder", root=str(root), on_bad="skip", test_split=0.5, workers=0, size=8, channels=3)
    for epoch in range(2):
        list(d.train.loader(4, seed=0).iterate(epoch))
    logits = predict_logits(lambda x: torch.ones(x.shape[0], 2), d.test, 4)
    lines = [str(w.message) for w in recwarn if "skipping" in str(w.message)]
    assert sorted(set(lines)) == sorted(lines) and len(lines) == 2, lines  # once per file
    assert any("a/a0.png (the file is empty)" in m for m in lines) and not any("BytesIO" in m for m in lines)
    labels = torch.cat([d.train.labels(), d.test.labels()])
    assert int((labels == -1).sum()) == 2  # each skipped image reads -1 wherever it fell
    scored = classification_metrics(logits, d.test.labels())
    kept = d.test.labels() >= 0
    assert scored["acc"] == pytest.approx(float((d.test.labels()[kept] == 0).float().mean()))
    COUNTED.append("empty + truncated image")


def test_metrics_leave_out_unread_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    m = classification_metrics_of(logits, torch.tensor([0, -1, 0]))
    assert m["acc"] == 1.0  # the -1 row (predicted 1) is not counted as a mistake


def classification_metrics_of(logits, labels):
    from kdistill.metrics import classification_metrics

    return classification_metrics(logits, labels, logits.clone())


def test_without_a_terminal_a_progress_line_is_written_within_the_epoch(tmp_path, capsys, monkeypatch):
    """A log file or a pipe got nothing for minutes within a long epoch."""
    from kdistill.engine import progress

    monkeypatch.setattr(progress, "LINE_S", 0.0)  # every step (30 s in use)
    cfg = {**CFG, "train": {**CFG["train"], "progress": True}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "img/s" in line]
    assert [line.split(" · ")[0] for line in lines] == [f"student 1/1: step {s}/3" for s in (1, 2, 3)], lines
    assert all("ETA 0:" in line and "loss " in line for line in lines)
    assert lines[-1].split("ETA ")[1].startswith("0:00")  # nothing left after the last step


def _shard(path: Path, n: int, img: bytes, first: int = 0) -> list[int]:
    """A tar shard of ``n`` samples; the byte offsets where each sample's members start."""
    import tarfile

    starts = []
    with tarfile.open(path, "w") as tf:
        for k in range(first, first + n):
            starts.append(tf.offset)
            for ext, data in (("png", img), ("cls", str(k % 2).encode())):
                info = tarfile.TarInfo(f"{k:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return starts


@pytest.mark.parametrize("how", ["cut-at-member-boundary", "fewer-than-samples-per-shard"])
def test_a_short_tar_shard_is_reported_and_counted(tmp_path, how):
    from kdistill.data import load_dataset

    _png(tmp_path / "i.png", True, 0)
    img = (tmp_path / "i.png").read_bytes()
    starts = _shard(tmp_path / "train-0.tar", 4 if how.startswith("cut") else 2, img)
    _shard(tmp_path / "train-1.tar", 4, img, first=10)
    _shard(tmp_path / "test-0.tar", 4, img)
    if how.startswith("cut"):
        os.truncate(tmp_path / "train-0.tar", starts[2])  # a copy that stopped after 2 whole samples
    extra = {} if how.startswith("cut") else {"samples_per_shard": 4}
    with pytest.warns(UserWarning, match="train-0.tar") as w:
        d = load_dataset("webdataset", root=str(tmp_path), train="train-{0..1}.tar", test="test-0.tar", **extra)
    assert len(d.train) == 6 and len([m for m in w if "train-0.tar" in str(m.message)]) == 1
    assert any("train-0.tar" in s and ("2 of 4" in s or "after 2 samples" in s) for s in d.train.skipped)
    assert not d.test.skipped  # whole shards say nothing
    COUNTED.append(f"tar {how}")


@pytest.mark.parametrize("case", ["object-array", "fifo", "1e12-classes", "not-a-zip"])
def test_a_hostile_npz_dataset_is_one_line(tmp_path, capsys, case):
    f = tmp_path / "d.npz"
    x, y = np.zeros((8, 12), np.float32), np.arange(8) % 3
    if case == "object-array":
        np.savez(f, x_train=np.array([{"a": 1}] * 8, dtype=object), y_train=y, x_test=x, y_test=y)
    elif case == "fifo":
        os.mkfifo(f)
    elif case == "1e12-classes":
        np.savez(f, x_train=x, y_train=np.r_[y[:-1], 10**12], x_test=x, y_test=y)
    else:
        f.write_bytes(b"PK\x03\x04 not really")
    cfg = {**CFG, "data": {"name": "npz", "options": {"path": str(f)}, "batch_size": 4}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    err = _one_error(capsys, ["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")], code=2)
    assert "d.npz" in err
    COUNTED.append(f"npz {case}")


HOSTILE_CASES = 75  # the COUNTED.append calls a full run of this module makes


def test_zz_the_hostile_case_count(request):
    """Run last in this module: every case above ran (skips excepted)."""
    if request.config.option.keyword or len(COUNTED) == 0:
        pytest.skip("a subset of the module ran")
    import importlib.util

    optional = all(importlib.util.find_spec(m) for m in ("transformers", "pyarrow"))
    if optional and not SKIPPED_CASES:
        assert len(COUNTED) == HOSTILE_CASES, sorted(COUNTED)
    else:  # a lighter environment skips the Hugging Face / parquet / tmpfs cases
        assert len(COUNTED) <= HOSTILE_CASES - len(SKIPPED_CASES)
    print(f"\n{len(COUNTED)} hostile cases ran")
