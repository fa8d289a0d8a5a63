"""The configuration of a causal-LM run (``task: causal-lm``): :class:`LMRunConfig`, the
:class:`kdistill.config.RunConfig` of this task.

It keeps RunConfig's ``train`` and ``output`` sections and method check; ``data``,
``teacher``, ``student`` are narrowed to text and ``hf:`` models, and ``tokenizer`` and
``lm`` are its own::

    task: causal-lm
    data: {train: corpus.txt, val_split: 0.1, block_size: 64, batch_size: 16}
    tokenizer: byte                       # or hf:PATH; default: the student's hf: folder
    teacher: {model: hf:teacher_folder}   # or hf-config + kwargs (trained first, in the run)
    student: {model: hf-config, kwargs: {model_type: llama, hidden_size: 64, num_hidden_layers: 1}}
    method: {name: gkd, beta: 0.5}
    lm: {regime: supervised}              # or sequence, on_policy (lmbda, max_new_tokens...)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ...config import RunConfig, Strict, TrainConfig, check_method
from ...lm.teacher_config import MultiTeacherConfig, ServedTeacherConfig

TASK = "causal-lm"


class LMDataConfig(Strict):
    """Text from local files.

    ``train`` / ``val``: a ``.txt`` file (or a folder of them), packed into blocks of
    ``block_size`` tokens; or records, one row each: a ``.jsonl`` file or a local Hugging
    Face dataset (a ``save_to_disk`` folder, a ``.parquet`` / ``.arrow`` file, a folder of
    ``.parquet`` files) of ``{"prompt", "completion"}`` (loss on the completion only),
    ``{"messages"}`` chat (loss on the assistant turns only) or ``{"text"}`` records.
    ``separator``: a line that splits a text file into documents (``"%"`` for fortune
    files), each ended by the end-of-text token.

    ``text_column`` / ``prompt_column`` + ``completion_column`` / ``messages_column``: the
    columns (JSONL keys) holding a record's fields when they are not named ``text`` /
    ``prompt``, ``completion`` / ``messages``; one kind at most. Unset: a dataset's
    ``messages`` column, else ``prompt`` and ``completion``, else ``text``.
    """

    train: str
    val: str | None = None
    val_split: Annotated[float, Field(ge=0.0, le=0.9)] = 0.1
    block_size: Annotated[int, Field(ge=4, le=1 << 16)] = 128
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 16
    eval_batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 64
    max_blocks: Annotated[int, Field(ge=1)] | None = None
    separator: str | None = None
    split_seed: int = 0
    text_column: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    messages_column: str | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k, set_ in (("data.text_column", self.text_column is not None),
                                   ("data.prompt_column/completion_column",
                                    self.prompt_column is not None or self.completion_column is not None),
                                   ("data.messages_column", self.messages_column is not None)) if set_]
        if len(kinds) > 1:
            raise ValueError(f"{' and '.join(kinds)} name different kinds of records; set one")
        return self

    def columns(self) -> dict[str, str] | None:
        """``{record field: column}`` from the ``*_column`` settings, or ``None`` (guess)."""
        if self.messages_column is not None:
            return {"messages": self.messages_column}
        if self.prompt_column is not None or self.completion_column is not None:
            return {"prompt": self.prompt_column or "prompt", "completion": self.completion_column or "completion"}
        if self.text_column is not None:
            return {"text": self.text_column}
        return None


class LMPeftConfig(Strict):
    """A LoRA student (``student.peft``, through the ``peft`` library): rank ``r``,
    scaling ``alpha / r``, dropout on the adapters' input, and the linear layers that get
    adapters (module names, or ``all-linear``: every linear layer but the output layer)."""

    r: Annotated[int, Field(ge=1, le=1 << 16)] = 8
    alpha: Annotated[float, Field(gt=0, le=1e6)] = 16.0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class LMModelConfig(Strict):
    """``model``: ``hf:PATH`` (a local Hugging Face folder: config, weights, tokenizer),
    ``hf-config`` with ``kwargs`` (a config built in the process: ``model_type`` plus its
    settings; ``vocab_size`` defaults to the tokenizer's), or ``hf-config:{json}``."""

    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    #: the student only: train LoRA adapters instead of every weight (kdistill.lm.lora)
    peft: LMPeftConfig | None = None

    @field_validator("model")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not (v.startswith("hf:") or v == "hf-config" or v.startswith("hf-config:")):
            raise ValueError(f"an LM model is 'hf:PATH', 'hf-config' (with kwargs) or 'hf-config:{{json}}'; got {v!r}")
        return v

    @model_validator(mode="after")
    def _train(self):
        TrainConfig(**self.train)
        return self


class LMConfig(Strict):
    """How the student learns from the teacher.

    * ``supervised``: token-level KD on the dataset's text (off-policy).
    * ``sequence``: the teacher writes completions for every training prompt once (Kim &
      Rush 2016), stored in the run folder as a transfer set; the student trains on them.
    * ``on_policy``: each batch, with probability ``lmbda``, is replaced by the student's
      own samples from the batch's prompts, scored by the teacher (GKD, Agarwal et al. 2024).

    Prompts: a JSONL record's prompt; for packed text the first ``prompt_tokens`` tokens of
    each block. Completions fill the block (``block_size - prompt length`` tokens) unless
    ``max_new_tokens`` is smaller. Defaults as TRL's GKDConfig: lmbda 0.5, sampling
    temperature 0.9.
    """

    regime: Literal["supervised", "sequence", "on_policy"] = "supervised"
    lmbda: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    prompt_tokens: Annotated[int, Field(ge=1)] = 16
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    gen_temperature: Annotated[float, Field(ge=0.0, le=100.0)] = 0.9
    #: sequence-level KD: greedy teacher completions (Kim & Rush's beam of 1) or sampled
    greedy: bool = True
    #: supervised regime: train from a top-k cache of the teacher's next-token
    #: log-probabilities (k per token) instead of the live teacher (see kdistill.cache.tokens)
    cache_k: Annotated[int, Field(ge=1)] | None = None
    #: where the cache is written, or reused when it matches (default: <run>/teacher_cache)
    cache_dir: str | None = None
    #: fixed prompts whose student completions the results show
    sample_prompts: list[str] = Field(default_factory=list)
    #: recompute each decoder layer's activations in the backward pass instead of keeping
    #: them (Hugging Face's gradient_checkpointing_enable, non-reentrant): less memory, one
    #: more forward per step, the same gradients. For every network trained in the run
    gradient_checkpointing: bool = False
    #: token losses over chunks of this many positions, from the hidden states (the
    #: vocabulary projection made per chunk and again in the backward pass): peak memory
    #: grows with the chunk, not tokens x vocabulary. auto: 1024 positions, fewer for a
    #: large vocabulary (128 at 131,072 tokens), and full logits when a batch's are no larger
    #: than such a chunk (2^24 values); null: full logits (kdistill.lm.chunked)
    loss_chunk: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"


class LMRunConfig(RunConfig):
    task: Literal["causal-lm"] = TASK
    data: LMDataConfig
    tokenizer: str | None = None
    #: a model in the process, a served one (kind: served, kdistill.lm.served) or several (kind: multi)
    teacher: LMModelConfig | ServedTeacherConfig | MultiTeacherConfig | None = None
    student: LMModelConfig
    method: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=lambda: {"name": "forward_kl"})
    lm: LMConfig = Field(default_factory=LMConfig)

    @field_validator("method")
    @classmethod
    def _methods(cls, v):
        check_method(v)
        return v

    @model_validator(mode="after")
    def _cache_regime(self):
        if self.scheme:
            raise ValueError("scheme: schemes train image students; a causal-LM run has none")
        if self.lm.cache_k is not None and self.lm.regime != "supervised":
            raise ValueError("lm.cache_k (a teacher cache) needs lm.regime: supervised; sequence-level and "
                             "on-policy runs score new text with the live teacher")
        return self

    @model_validator(mode="after")
    def _peft_student_only(self):
        if getattr(self.teacher, "peft", None) is not None:  # served/multi teachers have no peft key
            raise ValueError("teacher.peft: the teacher is frozen; LoRA adapters (peft) are for the student")
        return self

    @field_validator("tokenizer")
    @classmethod
    def _tok(cls, v):
        if v is not None and v != "byte" and not v.startswith("hf:"):
            raise ValueError(f"tokenizer is 'byte' or 'hf:PATH' (a local folder); got {v!r}")
        return v

    def method_terms(self) -> list[dict[str, Any]]:
        m = self.method
        return [dict(m)] if isinstance(m, dict) else [dict(t) for t in m]
