"""The served teacher: `kdistill serve-teacher` started as a real process on 127.0.0.1, the
top-k cache filled through its vLLM-style prompt_logprobs equal to the in-process cache,
a fill killed half-way resumed, and a server that is down, slow or answers garbage
reported in one message with nothing half-written used."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from kdistill.cache.tokens import LMCachedTeacher, write_lm_cache  # noqa: E402
from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError, DataError  # noqa: E402
from kdistill.lm import ByteTokenizer, build_causal_lm, load_text_dataset  # noqa: E402
from kdistill.lm.served import ServedClient, fill_served_cache  # noqa: E402
from kdistill.lm.teacher_config import ServedTeacherConfig  # noqa: E402
from kdistill.tasks.causal_lm.run import run_lm  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    tok = ByteTokenizer()
    net, _ = build_causal_lm("hf-config", TINY, tok.vocab_size, seed=7, eos_id=tok.eos_id)
    folder = tmp_path_factory.mktemp("teacher") / "tiny-teacher"
    net.save(folder, tok)
    return folder


def _start_server(folder):
    proc = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "serve-teacher", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()
    if "Serving" not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()}")
    return proc, line.split(" at ")[-1].strip()


@pytest.fixture(scope="module")
def server(teacher_dir):
    proc, url = _start_server(teacher_dir)
    yield url
    proc.terminate()
    proc.wait(10)


def _data(corpus, rows=24):
    return load_text_dataset(str(corpus), ByteTokenizer(), block_size=16, separator="%").select(torch.arange(rows))


def _cfg(url, **kw):
    return ServedTeacherConfig(kind="served", url=url, model="tiny-teacher", **kw)


def _quiet(line):
    return None


def test_cache_through_the_server_equals_the_in_process_cache(corpus, teacher_dir, server, tmp_path):
    tok, ds = ByteTokenizer(), _data(corpus)
    teacher, _ = build_causal_lm(f"hf:{teacher_dir}", {}, tok.vocab_size)
    write_lm_cache(teacher, ds, tok, 12, tmp_path / "local", batch_size=8, log=_quiet)
    meta = fill_served_cache(_cfg(server, top_k=12, batch_size=5, concurrency=3), ds, tok, tmp_path / "served",
                             log=_quiet)
    assert meta["requests"] == 1 + 5  # the model check, then 24 rows in requests of 5
    local, served = LMCachedTeacher(tmp_path / "local", ds), LMCachedTeacher(tmp_path / "served", ds)
    np.testing.assert_allclose(np.asarray(served.values, np.float32), np.asarray(local.values, np.float32),
                               atol=2e-3, rtol=0)
    # ids agree wherever the values are not (nearly) tied
    v = np.asarray(local.values, np.float32)
    untied = np.abs(np.diff(v, axis=-1, prepend=1.0)) > 1e-2
    assert (served.indices[untied] == local.indices[untied]).all()
    # a second fill reuses it without a request
    again = fill_served_cache(_cfg(server, top_k=12), ds, tok, tmp_path / "served", log=_quiet)
    assert again["requests"] == meta["requests"]
    with pytest.raises(ConfigError, match="another k"):
        fill_served_cache(_cfg(server, top_k=5), ds, tok, tmp_path / "served", log=_quiet)


def test_server_refuses_bad_requests_and_unknown_model(server, corpus, tmp_path):
    client = ServedClient(_cfg(server, retries=0))
    with pytest.raises(ConfigError, match="HTTP 400.*outside"):
        client.call("/completions", {"model": "tiny-teacher", "prompt": [[999999]], "max_tokens": 1})
    with pytest.raises(ConfigError, match="serves \\['tiny-teacher'\\], not teacher.model 'other'"):
        fill_served_cache(ServedTeacherConfig(kind="served", url=server, model="other"), _data(corpus), ByteTokenizer(),
                          tmp_path / "c", log=_quiet)
    assert not (tmp_path / "c" / "meta.json").exists()


def _fill_script(url, corpus, folder):
    return textwrap.dedent(f"""
        import torch
        from kdistill.lm import ByteTokenizer, load_text_dataset
        from kdistill.lm.served import fill_served_cache
        from kdistill.lm.teacher_config import ServedTeacherConfig
        ds = load_text_dataset({str(corpus)!r}, ByteTokenizer(), block_size=16, separator="%")
        cfg = ServedTeacherConfig(kind="served", url={url!r}, model="tiny-teacher", top_k=4, batch_size=1,
                                  concurrency=1)
        fill_served_cache(cfg, ds, ByteTokenizer(), {str(folder)!r}, log=lambda s: None)
    """)


def test_a_fill_killed_half_way_resumes(corpus, server, tmp_path):
    folder = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _fill_script(server, corpus, folder)], env=_env())
    done_path = folder / ".done.npy"
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if done_path.is_file():
            try:
                done = int(np.load(done_path, mmap_mode="r").sum())
            except (ValueError, OSError):
                done = 0
            if done >= 3:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    ds = load_text_dataset(str(corpus), ByteTokenizer(), block_size=16, separator="%")
    assert not (folder / "meta.json").exists(), "the fill finished before it could be killed"
    with pytest.raises(DataError, match="No finished"):
        LMCachedTeacher(folder, ds)  # a killed fill is never read
    had = int(np.load(done_path).sum())
    assert 0 < had < len(ds)
    client = ServedClient(_cfg(server, top_k=4, batch_size=1, concurrency=1))
    meta = fill_served_cache(_cfg(server, top_k=4, batch_size=1, concurrency=1), ds, ByteTokenizer(), folder,
                             log=_quiet, client=client)
    assert client.requests == 1 + len(ds) - had  # only the rows not done were asked for
    fresh = fill_served_cache(_cfg(server, top_k=4, batch_size=7), ds, ByteTokenizer(), tmp_path / "fresh", log=_quiet)
    assert meta["rows"] == fresh["rows"] == len(ds)
    a, b = LMCachedTeacher(folder, ds), LMCachedTeacher(tmp_path / "fresh", ds)
    np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))
    assert not (folder / ".done.npy").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Garbage(BaseHTTPRequestHandler):
    answer = b"{}"

    def log_message(self, *a):
        return None

    def do_GET(self):
        body = json.dumps({"data": [{"id": "tiny-teacher"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)


@pytest.mark.parametrize("answer, message", [
    (b"<html>oops</html>", "not JSON"),
    (json.dumps({"choices": [{"index": 0, "prompt_logprobs": [None]}]}).encode(), "prompt_logprobs"),
    (json.dumps({"choices": [{"index": i, "prompt_logprobs": [None] + [{"5": {"logprob": 3.0}}] * 15,
                              "logprobs": {"top_logprobs": [{"token_id:5": -1.0}]}} for i in range(4)]}).encode(),
     "log-probability 3.0"),
], ids=["html", "short", "positive-logprob"])
def test_garbage_answers_stop_the_fill_with_one_message(corpus, tmp_path, answer, message):
    handler = type("H", (_Garbage,), {"answer": answer})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        with pytest.raises((DataError, ConfigError), match=message):
            fill_served_cache(_cfg(url, top_k=1, batch_size=4, retries=0), _data(corpus, 8), ByteTokenizer(),
                              tmp_path / "c", log=_quiet)
    finally:
        httpd.shutdown()
    assert not (tmp_path / "c" / "meta.json").exists()
    assert int(np.load(tmp_path / "c" / ".done.npy").sum()) == 0  # nothing of the answer was kept


def test_server_down_and_slow_are_one_message(corpus, tmp_path):
    down = f"http://127.0.0.1:{_free_port()}/v1"
    t0 = time.time()
    with pytest.raises(ConfigError, match="did not answer /models after 3 tries"):
        fill_served_cache(_cfg(down, retries=2, backoff_s=0.05), _data(corpus, 4), ByteTokenizer(), tmp_path / "c",
                          log=_quiet)
    assert time.time() - t0 >= 0.15  # backoff 0.05 then 0.1
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(ConfigError, match="last: timed out"):
            fill_served_cache(_cfg(url, retries=1, backoff_s=0.0, timeout_s=0.3), _data(corpus, 4), ByteTokenizer(),
                              tmp_path / "d", log=_quiet)
    finally:
        silent.close()
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def _run_cfg(corpus, tmp_path, teacher, name, **lm):
    return load_config(base={
        "task": "causal-lm",
        "data": {"train": str(corpus), "block_size": 24, "batch_size": 16, "val_split": 0.2, "separator": "%"},
        "tokenizer": "byte", "teacher": teacher, "student": {"model": "hf-config", "kwargs": TINY},
        "method": {"name": "forward_kl"} if lm.get("regime") != "sequence" else {"name": "ce"},
        "lm": {"prompt_tokens": 6, "max_new_tokens": 6, **lm},
        "train": {"epochs": 1, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0, "deterministic": True},
        "output": {"dir": str(tmp_path), "name": name}})


def test_runs_with_a_served_teacher_match_in_process(corpus, teacher_dir, server, tmp_path):
    served = {"kind": "served", "url": server, "model": "tiny-teacher", "top_k": 257}
    local = {"model": f"hf:{teacher_dir}"}
    a = run_lm(_run_cfg(corpus, tmp_path, served, "served"), log=_quiet)
    b = run_lm(_run_cfg(corpus, tmp_path, local, "local", cache_k=257), log=_quiet)
    assert a["teacher"]["kind"] == "served"
    assert abs(a["final"]["val"]["ppl"] / b["final"]["val"]["ppl"] - 1) < 1e-3
    seq_a = run_lm(_run_cfg(corpus, tmp_path, served, "seq-served", regime="sequence"), log=_quiet)
    seq_b = run_lm(_run_cfg(corpus, tmp_path, local, "seq-local", regime="sequence"), log=_quiet)
    rows_a = (tmp_path / "seq-served" / "transfer.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "seq-local" / "transfer.jsonl").read_text().splitlines()
    assert rows_a == rows_b  # greedy completions: the same tokens through the server
    assert abs(seq_a["final"]["val"]["nll"] - seq_b["final"]["val"]["nll"]) < 1e-4
    with pytest.raises(ConfigError, match="on_policy needs a teacher in the process"):
        run_lm(_run_cfg(corpus, tmp_path, served, "op", regime="on_policy"), log=_quiet)


def test_cli_serve_teacher_errors(tmp_path, teacher_dir):
    from kdistill.cli import main

    assert main(["serve-teacher", str(tmp_path)]) != 0
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        out = subprocess.run([sys.executable, "-m", "kdistill.cli", "serve-teacher", str(teacher_dir), "--port",
                              str(busy.getsockname()[1])], capture_output=True, text=True, env=_env(), timeout=120)
    finally:
        busy.close()
    assert out.returncode != 0 and "error:" in out.stderr and "Traceback" not in out.stderr


def test_cli_train_with_the_server_down_is_one_error_line(corpus, tmp_path, capsys):
    import yaml

    from kdistill.cli import main

    down = {"kind": "served", "url": f"http://127.0.0.1:{_free_port()}/v1", "model": "m", "retries": 0}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(_run_cfg(corpus, tmp_path, down, "down").model_dump(mode="json")))
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "did not answer /models after 1 tries" in err and "Traceback" not in err
    assert not (tmp_path / "down" / "teacher_cache").exists()
