"""The causal-LM distiller: token terms computed ``lm.loss_chunk`` positions at a time
from the networks' final hidden states (:mod:`kdistill.methods._token_chunked`), so no
``(batch, tokens, vocabulary)`` logits are materialised for the student or a live teacher.

The chunked path is taken when every weighted term can take it (a token divergence, or
``ce`` with hard labels), the student is a Hugging Face model whose logits are its
decoder's last hidden state times a linear output layer (checked once per network on a
two-token probe: a model that scales or caps its logits fails the probe), and no term
records features. Otherwise the distiller computes full logits as every other distiller.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..methods import Distiller
from ..methods._base import as_batch
from ..methods._token_chunked import AUTO_ELEMENTS, HeadInput, auto_chunk, chunked_ce
from ..methods._token_method import TokenDivergence
from ..methods.ce import CrossEntropy
from ..teachers import ModuleTeacher


def _is_sharded(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor"  # FSDP2: the head's weight is a shard until its unit gathers it


@torch.no_grad()
def _probe(lm: nn.Module, decoder: nn.Module, head: nn.Linear) -> bool:
    """Whether ``head(decoder(ids))`` equals ``lm(ids)`` on a two-token input."""
    was = lm.training
    lm.eval()
    try:
        device = head.weight.device
        ids = torch.tensor([[0, min(1, lm.vocab_size - 1)]], device=device)
        full = lm(ids).float()
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        mine = HeadInput(hidden, head.weight, head.bias, lm.vocab_size).logits(hidden).float()
        return mine.shape == full.shape and bool(torch.allclose(mine, full, atol=1e-4, rtol=1e-4))
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return False
    finally:
        lm.train(was)


def decoder_and_head(lm: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder (ids -> last hidden state) and linear output layer of a
    :class:`~kdistill.lm.models.CausalLM`, or ``None`` when its logits are not just that."""
    cached = getattr(lm, "_kd_decoder_head", None)
    if cached is not None:
        return cached or None
    hf = getattr(lm, "hf", None)
    found: tuple = ()
    if hf is not None and hasattr(lm, "vocab_size"):
        try:
            decoder, head = hf.get_decoder(), hf.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            decoder = head = None
        if isinstance(head, nn.Linear) and type(head) is nn.Linear and decoder is not None \
                and not _is_sharded(head.weight) and _probe(lm, decoder, head):
            found = (decoder, head)
    object.__setattr__(lm, "_kd_decoder_head", found)  # not a submodule: no state_dict entry
    return found or None


def head_input(lm: nn.Module, ids: Tensor) -> HeadInput:
    """The final hidden states of ``ids`` with the output layer that makes them logits."""
    decoder, head = decoder_and_head(lm)
    hidden = decoder(input_ids=ids.long(), use_cache=False).last_hidden_state
    return HeadInput(hidden, head.weight, head.bias, lm.vocab_size)


class LMDistiller(Distiller):
    """A :class:`~kdistill.methods.Distiller` whose token terms run over chunks of
    ``loss_chunk`` positions (``"auto"``: :func:`~kdistill.methods._token_chunked.auto_chunk`
    of the vocabulary, and full logits for a batch whose logits are no larger than one such
    chunk; ``None``: full logits, as before). Subclasses change the batch before
    the networks see it through :meth:`prepare_batch`."""

    def __init__(self, student: nn.Module, teacher, terms, loss_chunk: int | str | None = "auto"):
        super().__init__(student, teacher, terms)
        self.loss_chunk = loss_chunk

    @classmethod
    def wrap(cls, distiller: Distiller, loss_chunk: int | str | None) -> LMDistiller:
        """The same student, teacher and terms as ``distiller``, computed chunked."""
        return cls(distiller.student, distiller.teacher, list(zip(distiller.weights, distiller.terms)), loss_chunk)

    def prepare_batch(self, batch: dict) -> dict:
        return batch

    def context(self, batch):
        return super().context(self.prepare_batch(as_batch(batch)))

    def _chunkable(self, batch: dict) -> bool:
        if not self.loss_chunk or self._taps is not None or self.teacher_specs:
            return False
        vocab = getattr(self.student, "vocab_size", None)
        if self.loss_chunk == "auto" and vocab and batch["x"].numel() * vocab <= AUTO_ELEMENTS:
            return False  # the whole batch's logits fit one chunk: recomputing them would only cost time
        for w, term in zip(self.weights, self.terms):
            ce = isinstance(term, CrossEntropy) and "y_soft" not in batch
            if w and not (isinstance(term, TokenDivergence) or ce):
                return False
        return decoder_and_head(self.student) is not None

    def _teacher_for_chunks(self, batch: dict):
        t = self.teacher
        if isinstance(t, ModuleTeacher) and decoder_and_head(t.module) is not None:
            with torch.no_grad():
                return head_input(t.module, batch["x"])
        return self.teacher_output(batch)

    def forward(self, batch) -> dict[str, Tensor]:
        batch = as_batch(batch)
        if not self._chunkable(batch):
            return super().forward(batch)
        batch = self.prepare_batch(batch)
        needs = any(w and isinstance(m, TokenDivergence) for w, m in zip(self.weights, self.terms))
        teacher = self._teacher_for_chunks(batch) if needs else None
        student = head_input(self.student, batch["x"])
        chunk = auto_chunk(student.vocab) if self.loss_chunk == "auto" else int(self.loss_chunk)
        out: dict[str, Tensor] = {}
        total = student.hidden.new_zeros((), dtype=torch.float32)
        for w, term in zip(self.weights, self.terms):
            if not w:
                continue
            if isinstance(term, TokenDivergence):
                value = term.chunked(student, teacher, batch["y"], chunk)
            else:
                value = chunked_ce(student, batch["y"], term.cfg.label_smoothing, chunk)
            out[f"loss_{term.name}"] = w * value
            total = total + out[f"loss_{term.name}"]
        return {"loss": total, **out}
