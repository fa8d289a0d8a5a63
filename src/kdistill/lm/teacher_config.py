"""The teacher sections of a causal-LM config that are not a model in the process: a
served teacher (:mod:`kdistill.lm.served`) and several teachers
(:mod:`kdistill.lm.multi_teacher`). Light: pydantic only, so the config loads fast."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..config import Strict


class ServedTeacherConfig(Strict):
    """``teacher: {kind: served, url: http://host:8000/v1, model: NAME, top_k: 20}``.

    ``url``: the server's OpenAI base URL (``/v1``). ``model``: the served model's name
    (vLLM: the ``MODEL`` of ``vllm serve MODEL``, or its ``--served-model-name``).
    ``top_k``: tokens kept per position in the cache (vLLM caps it with its
    ``--max-logprobs``, default 20). The endpoint's tokenizer must be the run's
    (``tokenizer: hf:PATH`` with the served model's tokenizer files).
    """

    kind: Literal["served"]
    url: str
    model: str
    top_k: Annotated[int, Field(ge=1, le=1 << 16)] = 20
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    #: an API key sent as ``Authorization: Bearer`` (vLLM's ``--api-key``)
    api_key: str | None = None
