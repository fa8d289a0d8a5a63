"""The teacher sections of a causal-LM config that are not a model in the process: a
served teacher (:mod:`kdistill.lm.served`) and several teachers
(:mod:`kdistill.lm.multi_teacher`). Light: pydantic only, so the config loads fast."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

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


class MemberConfig(Strict):
    """One teacher of several: ``model: hf:PATH`` (a trained folder) or ``cache: PATH`` (its
    top-k cache on this run's training data, :mod:`kdistill.cache.tokens`), and its ``name``
    (what a record's routing column holds; default: its position, ``"0"``, ``"1"``...)."""

    model: str | None = None
    cache: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.model is None) == (self.cache is None):
            raise ValueError("a member is 'model: hf:PATH' or 'cache: PATH', one of the two")
        if self.model is not None and not self.model.startswith("hf:"):
            raise ValueError(f"a member of several teachers is a trained folder 'hf:PATH'; got {self.model!r}")
        return self


class MultiTeacherConfig(Strict):
    """``teacher: {kind: multi, members: [{model: hf:A}, {model: hf:B}], weighting: route}``.

    ``weighting``: ``fixed`` (``weights``, default equal), ``entropy`` (per sample, the
    member with the lower mean entropy on it weighs more: ``softmax(-H)``), ``label`` (each
    member's mean probability of the sample's tokens, normalised) or ``route`` (each record
    is answered by the member its ``field`` column names; records without one get
    ``weights``). The members' next-token distributions are mixed with these weights
    (:class:`kdistill.teachers.EnsembleTeacher`).
    """

    kind: Literal["multi"]
    members: Annotated[list[MemberConfig], Field(min_length=2, max_length=64)]
    weighting: Literal["fixed", "entropy", "label", "route"] = "fixed"
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    field: str = "teacher"

    @model_validator(mode="after")
    def _check(self):
        if self.weights is not None and (len(self.weights) != len(self.members) or sum(self.weights) <= 0):
            raise ValueError(f"teacher.weights: {len(self.members)} non-negative numbers (one per member) with a "
                             "positive sum")
        names = self.names()
        if len(set(names)) != len(names):
            raise ValueError(f"teacher.members: names must differ; got {names}")
        return self

    def names(self) -> list[str]:
        return [m.name if m.name is not None else str(i) for i, m in enumerate(self.members)]
