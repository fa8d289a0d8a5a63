"""A local teacher folder served over HTTP with the part of vLLM's OpenAI-compatible
completions API that distillation uses (``kdistill serve-teacher FOLDER``).

``GET /v1/models`` lists the one model (plus ``kdistill_tokenizer``: the tokenizer's
fingerprint, which :mod:`kdistill.lm.served` checks when a server gives it).

``POST /v1/completions`` with ``prompt`` (text, token ids, or a list of either),
``max_tokens`` (>= 0), ``temperature`` (0: greedy), ``seed``, and:

* ``prompt_logprobs: k`` -- per prompt position ``t`` the ``k`` most likely tokens given
  the tokens before ``t`` (and the prompt's own token), as vLLM returns them:
  ``[null, {"<id>": {"logprob", "rank", "decoded_token"}}, ...]``;
* ``logprobs: k`` -- for each generated token its log-probability and the ``k`` most likely
  alternatives (``top_logprobs``, keyed ``"token_id:<id>"`` when
  ``return_tokens_as_token_ids`` is true, else by the token's text).

Log-probabilities are of the model's raw next-token distribution (temperature 1), as
vLLM's default ``raw_logprobs``; generation stops at the end-of-text token, which is not
returned. One model forward at a time (a lock); the HTTP side answers requests in
threads. Loopback (127.0.0.1) by default: there is no authentication.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cache.tokens import tokenizer_fingerprint
from ..errors import ConfigError
from .generate import sample
from .models import build_causal_lm, folder_tokenizer

#: the most tokens one request may ask the server to score or generate
MAX_TOKENS_PER_REQUEST = 1 << 20


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400 and this message."""


class TeacherServer:
    """The model behind the HTTP handler: answers parsed completion requests."""

    def __init__(self, folder: str | Path, name: str | None = None):
        folder = Path(folder)
        self.tok = folder_tokenizer(f"hf:{folder}")
        if self.tok is None:
            raise ConfigError(f"{folder} holds no tokenizer; a served teacher needs its folder's tokenizer.")
        self.model, _ = build_causal_lm(f"hf:{folder}", {}, self.tok.vocab_size)
        self.model.eval()
        self.name = name or folder.name
        self.fingerprint = tokenizer_fingerprint(self.tok)
        self.lock = threading.Lock()

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "kdistill",
                                            "kdistill_tokenizer": self.fingerprint}]}

    def _prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            return [self.tok.encode(prompt)]
        if isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt:
            return [p for item in prompt for p in self._prompts(item)]
        raise BadRequest("prompt must be text, a list of token ids, or a non-empty list of those")

    def _check(self, prompts: list[list[int]], body: dict) -> tuple[int, int | None, int | None]:
        n = body.get("max_tokens", 16)
        pk, lk = body.get("prompt_logprobs"), body.get("logprobs")
        for key, v in (("max_tokens", n), ("prompt_logprobs", pk), ("logprobs", lk)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise BadRequest(f"{key} must be a non-negative integer")
        for p in prompts:
            if not p or any(not 0 <= i < self.tok.vocab_size for i in p):
                raise BadRequest(f"a prompt is empty or holds token ids outside 0..{self.tok.vocab_size - 1}")
        if sum(len(p) for p in prompts) * (1 + n) > MAX_TOKENS_PER_REQUEST:
            raise BadRequest("the request asks for too many tokens; send fewer prompts at a time")
        return n, pk, lk

    def complete(self, body: dict) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        prompts = self._prompts(body.get("prompt"))
        n, pk, lk = self._check(prompts, body)
        temp = float(body.get("temperature", 1.0))
        seed = body.get("seed")
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        choices = []
        for i, ids in enumerate(prompts):
            g = torch.Generator().manual_seed(int(seed) + i) if seed is not None else None
            choices.append(self._one(i, ids, n, temp, g, pk, lk, as_ids))
        return {"id": f"cmpl-{time.time_ns()}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices}

    @torch.no_grad()
    def _one(self, index: int, ids: list[int], n: int, temp: float, g, pk, lk, as_ids: bool) -> dict[str, Any]:
        with self.lock:
            full = sample(self.model, torch.tensor([ids]), n, temp, g)[0].tolist() if n else list(ids)
            new = full[len(ids):]
            stop = self.tok.eos_id in new
            if stop:
                new = new[: new.index(self.tok.eos_id)]
            scored = ids + new + ([self.tok.eos_id] if stop else [])
            lp = F.log_softmax(self.model(torch.tensor([scored])).float(), -1)[0] if (pk is not None or lk) else None
        choice: dict[str, Any] = {"index": index, "text": self.tok.decode(new), "finish_reason": "stop" if stop or n == 0
                                  else "length", "logprobs": None, "token_ids": new}
        if pk is not None:
            choice["prompt_logprobs"] = [None] + [self._ranked(lp[t - 1], ids[t], pk) for t in range(1, len(ids))]
        if lk:
            choice["logprobs"] = self._gen_logprobs(lp, ids, new, lk, as_ids)
        return choice

    def _ranked(self, row: torch.Tensor, actual: int, k: int) -> dict[str, dict[str, Any]]:
        v, i = row.topk(min(k, row.numel()))
        out = {str(int(t)): {"logprob": float(x), "rank": r + 1, "decoded_token": self.tok.decode([int(t)])}
               for r, (x, t) in enumerate(zip(v.tolist(), i.tolist()))}
        if str(actual) not in out:
            rank = int((row > row[actual]).sum()) + 1
            out[str(actual)] = {"logprob": float(row[actual]), "rank": rank, "decoded_token": self.tok.decode([actual])}
        return out

    def _gen_logprobs(self, lp, ids: list[int], new: list[int], k: int, as_ids: bool) -> dict[str, Any]:
        def key(t: int) -> str:
            return f"token_id:{t}" if as_ids else self.tok.decode([t])

        tokens, token_lp, top, offsets, at = [], [], [], [], 0
        # the first generated token follows the prompt's last position
        for j, t in enumerate(new if new else []):
            row = lp[len(ids) - 1 + j]
            v, i = row.topk(min(k, row.numel()))
            tokens.append(key(t))
            token_lp.append(float(row[t]))
            top.append({key(int(a)): float(b) for a, b in zip(i.tolist(), v.tolist())})
            offsets.append(at)
            at += len(self.tok.decode([t]))
        if not new:  # nothing generated (max_tokens 0, or end-of-text first): the next-token distribution
            row = lp[len(ids) - 1]
            v, i = row.topk(min(k, row.numel()))
            top.append({key(int(a)): float(b) for a, b in zip(i.tolist(), v.tolist())})
        return {"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top, "text_offset": offsets}


def make_handler(server: TeacherServer, log):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request through the caller's log
            log(f"{self.address_string()} {fmt % args}")

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "BadRequestError" if code == 400 else "NotFound",
                                        "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, server.models())
            elif self.path.rstrip("/") in ("/health", ""):
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/completions", "/completions"):
                self._error(404, f"no route {self.path}; this server answers /v1/completions")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                self._send(200, server.complete(body))
            except (BadRequest, ValueError, TypeError) as e:
                self._error(400, str(e))

    return Handler


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, log=print,
          ready=None) -> None:
    """Serve ``folder`` until interrupted. ``ready(url)`` (default: ``log``) is told the
    address once the socket listens (port 0 picks a free one)."""
    teacher = TeacherServer(folder, name)
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(teacher, lambda line: None))
    except OSError as e:
        raise ConfigError(f"Cannot listen on {host}:{port}: {e.strerror or e}; pick another --port.") from None
    httpd.daemon_threads = True
    url = f"http://{host}:{httpd.server_address[1]}/v1"
    (ready or log)(f"Serving {teacher.name} (vocabulary {teacher.tok.vocab_size}) at {url}")
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
