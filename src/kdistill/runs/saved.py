"""Rebuilding a saved model: ``model.json`` (how to build it) + ``model.safetensors``.

The one place that turns a run folder (or its ``teacher/``) back into a network; export,
evaluate, predict, profile, report and the schemes all call it. A record is a file someone
may have shared: a model name in it that would import code (``package.module:factory``) is
refused unless the caller passes ``trust_code`` (see :func:`kdistill.models.require_trusted`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..engine.checkpoint import load_into, load_weights
from ..errors import CheckpointError
from ..models import TrustCode, create_model, require_trusted
from ..safe_read import ModelRecord, read_json, validate

REQUIRED = ("model", "num_classes", "input_shape")


def read_model_record(folder: str | Path, what: str = "student") -> dict[str, Any]:
    """``model.json`` of a run folder (or of its ``teacher/``), checked for the keys needed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{str(folder)!r} is not a folder; give the run folder that training wrote.")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        hint = (
            " It has checkpoints but no final model: the run did not finish; resume it with "
            "`kdistill train CONFIG --resume` (same output folder)."
            if (folder / "checkpoints").is_dir()
            else " Train a run first (`kdistill train CONFIG`) and pass its folder."
        )
        raise CheckpointError(f"{folder} has no model.safetensors (no finished {what} model).{hint}")
    if not (folder / "model.json").exists():
        raise CheckpointError(f"{folder} has model.safetensors but no model.json, so the {what} "
                              "cannot be rebuilt; it is written at the end of a run.")
    record = read_json(folder / "model.json", error=CheckpointError)
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise CheckpointError(f"{folder / 'model.json'} lacks {', '.join(missing)}; it cannot rebuild the {what}.")
    return validate(record, ModelRecord, folder / "model.json", CheckpointError)


def model_from_record(record: dict[str, Any], trust_code: TrustCode = False, source: str | Path | None = None) -> nn.Module:
    """The untrained network a ``model.json`` record describes.

    ``trust_code``: allow a record naming an importable factory (see module docstring);
    ``source``: the file the record came from, for the message.
    """
    kwargs = record.get("kwargs") or {}
    if isinstance(kwargs, dict):
        require_trusted(str(record.get("model")), kwargs, trust_code, str(source or "The model record"))
    try:
        if not isinstance(kwargs, dict):
            raise TypeError("kwargs is not an object")
        # a teacher with its own input format: its network takes the shape recorded there
        shape = (record.get("input") or {}).get("net_input_shape") or record["input_shape"]
        return create_model(str(record["model"]), int(record["num_classes"]), tuple(int(v) for v in shape),
                            trust_code=trust_code, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"The model record {record.get('model')!r} cannot rebuild a network: {e}.") from None


def rebuild(record: dict[str, Any], weights: str | Path, what: str = "model", trust: bool = False,
            strict_extra: bool = False, trust_code: TrustCode = False, source: str | Path | None = None) -> nn.Module:
    """The network of ``record`` with the weights of ``weights``, in eval mode.

    ``strict_extra``: refuse a file holding tensors the network lacks (a connector or an
    auxiliary head saved by mistake) instead of letting :func:`load_into` report them.
    ``trust``: allow a weights file that needs pickle; ``trust_code``: allow a record that
    names an importable factory.
    """
    model = model_from_record(record, trust_code, source)
    state = load_weights(weights, trust=trust)
    if strict_extra:
        extra = sorted(set(state) - set(model.state_dict()))
        if extra:
            raise CheckpointError(
                f"{weights} holds tensors that are not part of the {what} {record['model']!r}: "
                f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}. "
                "Only the bare student is exported; re-save it from the student alone."
            )
    load_into(model, state, what)
    if record.get("input"):  # a teacher that takes the data in its own format
        from ..teacher_input import InputSpec, TeacherInput

        spec = {k: v for k, v in record["input"].items() if k != "net_input_shape"}
        model = TeacherInput(model, InputSpec.make(**spec))
    return model.eval()


def load_saved(folder: str | Path, what: str = "student", trust_code: TrustCode = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``folder`` (``model.json`` + ``model.safetensors``), in eval mode.

    The load is strict: a file with tensors the rebuilt network lacks (a connector, an
    auxiliary head) or missing some of its tensors raises :class:`CheckpointError`. A
    ``model.json`` naming an importable factory is refused unless ``trust_code``.
    """
    folder = Path(folder)
    record = read_model_record(folder, what)
    model = rebuild(record, folder / "model.safetensors", what, strict_extra=True, trust_code=trust_code,
                    source=folder / "model.json")
    return model, record
