"""Token datasets for causal LMs, read from local files.

A sample is a row of ``block_size`` token ids ``x`` and its targets ``y``: ``y[t]`` is the
token that follows ``x[t]`` (the targets are already shifted, so logits at position ``t``
are compared with ``y[t]``), and ``-100`` marks positions without a target (prompt tokens,
padding). :class:`TokenDataset` implements the dataset protocol of
:mod:`kdistill.data.protocol`, so the Trainer reads it through the device-resident loader.

* Plain text (``.txt``, or a folder of them): tokenized, each document ended by the
  end-of-text token, concatenated and cut into blocks of ``block_size + 1`` tokens that
  overlap by one (every token is a target once). Prompts (for generation) are the first
  ``prompt_tokens`` tokens of a block.
* Records, one row each, cut to ``block_size + 1`` tokens and padded on the right (pads are
  never attended to by a causal model's earlier positions, and have no target):

  - ``{"prompt", "completion"}``: targets on the completion and its end-of-text token;
    the prompt is the generation prompt.
  - ``{"text"}``: targets everywhere, no prompt.
  - ``{"messages": [{"role", "content"}, ...]}`` (roles ``system``, ``user``,
    ``assistant``): a conversation rendered with the tokenizer's chat template when it has
    one, else with :data:`BUILTIN_CHAT` (see :func:`chat_tokens`); targets on the assistant
    turns only; the prompt is everything before the last assistant turn's content.

  Records come from a ``.jsonl`` file or a local Hugging Face dataset: a
  ``save_to_disk`` folder, a ``.parquet`` / ``.arrow`` file, or a folder of ``.parquet``
  files, read with ``datasets`` from local files only. ``columns`` maps a dataset's (or a
  JSONL file's) column names onto ``text`` / ``prompt`` + ``completion`` / ``messages``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..data.tokens import IGNORE_INDEX, TokenDataset
from ..errors import DataError, did_you_mean
from ..safe_read import LIMITS, check_regular

__all__ = ["BUILTIN_CHAT", "IGNORE_INDEX", "ROLES", "TokenDataset", "chat_tokens", "is_hf_dataset", "load_records",
           "load_text_dataset", "open_hf_dataset", "pack_text", "read_documents", "read_jsonl", "records_dataset"]

#: the roles a chat record's messages may have
ROLES = ("system", "user", "assistant")

#: the built-in chat template, for tokenizers without one (the byte tokenizer): each turn is
#: ``<|role|>\n`` then its content; a system or user turn ends with ``\n``, an assistant
#: turn with the end-of-text token (which is a target: the model learns to stop)
BUILTIN_CHAT = "<|{role}|>\n"

#: file suffixes read as Hugging Face datasets, and the ``datasets`` builder for each
HF_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


def _text_file(p: Path) -> bool:
    """A folder's text files: regular files (not links: Debian's fortune folders link
    ``name.u8`` to ``name``) named ``*.txt`` or without a suffix, not hidden."""
    return p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.suffix in ("", ".txt")


def read_documents(path: Path, separator: str | None) -> list[str]:
    """The documents of a text file (split at lines equal to ``separator``) or of every
    text file of a folder (``*.txt`` or no suffix), in name order."""
    files = sorted(p for p in path.rglob("*") if _text_file(p)) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no text files.")
    docs: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = f.read_bytes().decode("latin-1")
        if separator is None:
            docs.append(text)
            continue
        part: list[str] = []
        for line in text.splitlines(keepends=True):
            if line.rstrip("\r\n") == separator:
                if part:
                    docs.append("".join(part))
                part = []
            else:
                part.append(line)
        if part:
            docs.append("".join(part))
    return [d for d in docs if d.strip()]


def pack_text(docs: list[str], tokenizer, block_size: int, prompt_tokens: int, name: str,
              max_blocks: int | None = None) -> TokenDataset:
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer.encode(d))
        ids.append(tokenizer.eos_id)
    n = (len(ids) - 1) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n < 1:
        raise DataError(f"{name}: {len(ids)} tokens make no block of {block_size + 1}; use more text or a "
                        "smaller data.block_size.")
    t = torch.tensor(ids[: n * block_size + 1], dtype=torch.int64)
    x = t[:-1].reshape(n, block_size)
    y = t[1:].reshape(n, block_size)
    plen = torch.full((n,), min(prompt_tokens, block_size - 1), dtype=torch.int64)
    return TokenDataset(x, y, plen, tokenizer.vocab_size, name)


def _check_messages(messages, where: str) -> list[dict]:
    """The messages of a chat record as plain ``{"role", "content"}`` dicts, or a DataError."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects.")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}, message {j}: a message is an object with 'role' and 'content'; got {m!r:.80}.")
        if m["role"] not in ROLES:
            raise DataError(f"{where}, message {j}: role {m['role']!r} is not one of {', '.join(ROLES)}."
                            + did_you_mean(str(m["role"]), ROLES))
        if not isinstance(m["content"], str):
            raise DataError(f"{where}, message {j}: 'content' must be a string, got {type(m['content']).__name__}.")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant turn, so nothing to train on (the loss is "
                        "on assistant turns only).")
    return out


def _template_segments(messages: list[dict], tokenizer, where: str) -> list[tuple[str, bool]]:
    """The conversation as the tokenizer's chat template renders it, cut into ``(text,
    is_target)`` pieces: an assistant turn's piece is what rendering it adds after the
    previous turns and the generation prompt (its content and the template's end of turn)."""
    def render(msgs, gen):
        try:
            return tokenizer.render_chat(msgs, add_generation_prompt=gen)
        except Exception as e:  # a template's own error (jinja2 raises its own types)
            raise DataError(f"{where}: the tokenizer's chat template failed: {e}") from None

    full = render(messages, False)
    pieces, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        start, end = len(before), len(upto)
        if not (full.startswith(before) and full.startswith(upto) and pos <= start < end):
            raise DataError(f"{where}: the tokenizer's chat template does not render a conversation as its "
                            "earlier turns followed by the next one (it rewrites earlier turns), so the assistant "
                            "turns' tokens cannot be found; use prompt/completion records.")
        pieces += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    pieces.append((full[pos:], False))
    return pieces


def chat_tokens(messages, tokenizer, where: str = "chat record") -> tuple[list[int], list[bool], int]:
    """``(ids, is_target, prompt_len)`` of a conversation.

    With a tokenizer that has a chat template (``tokenizer.chat_template``), the template
    renders it (each piece tokenized on its own, as a prompt and its completion are);
    otherwise :data:`BUILTIN_CHAT` does: ``<|user|>\n`` + content + ``\n`` for system and
    user turns, ``<|assistant|>\n`` + content + end-of-text for assistant turns. Targets:
    the assistant turns' tokens (content and end of turn). The sequence ends with the
    end-of-text token (added unless the template ends with it; a target only after an
    assistant turn). ``prompt_len``: the tokens before the last assistant turn's content
    (the template's generation prompt included), where sequence-level and on-policy
    generation start.
    """
    messages = _check_messages(messages, where)
    if getattr(tokenizer, "chat_template", None):
        pieces = _template_segments(messages, tokenizer, where)
    else:
        pieces = []
        for m in messages:
            head = BUILTIN_CHAT.format(role=m["role"])
            if m["role"] == "assistant":
                pieces += [(head, False), (m["content"], True), (None, True)]
            else:
                pieces.append((head + m["content"] + "\n", False))
    ids: list[int] = []
    target: list[bool] = []
    prompt_len = 0
    for text, is_target in pieces:
        if is_target and text is not None:
            prompt_len = len(ids)
        part = [tokenizer.eos_id] if text is None else tokenizer.encode(text)
        ids += part
        target += [is_target] * len(part)
    if not ids or ids[-1] != tokenizer.eos_id:
        ids.append(tokenizer.eos_id)
        target.append(bool(target) and target[-1])
    return ids, target, prompt_len


def _record_tokens(r: dict, tokenizer, where: str) -> tuple[list[int], list[bool], int]:
    """``(ids, is_target, prompt_len)`` of one record."""
    if "prompt_ids" in r:
        p = _ids(r["prompt_ids"], tokenizer, where, "prompt_ids")
        c = _ids(r.get("completion_ids"), tokenizer, where, "completion_ids")
    elif "messages" in r:
        return chat_tokens(r["messages"], tokenizer, where)
    elif "prompt" in r and "completion" in r:
        p, c = tokenizer.encode(str(r["prompt"])), tokenizer.encode(str(r["completion"]))
    elif "text" in r:
        p, c = [], tokenizer.encode(str(r["text"]))
    else:
        raise DataError(f"{where} has neither 'messages' nor 'prompt' and 'completion' nor 'text': {sorted(r)}.")
    return p + c + [tokenizer.eos_id], [False] * len(p) + [True] * (len(c) + 1), len(p)


def records_dataset(records: Iterable[dict], tokenizer, block_size: int, name: str,
                    max_blocks: int | None = None) -> TokenDataset:
    """Rows from ``{"prompt", "completion"}`` / ``{"text"}`` / ``{"messages"}`` records (or
    token-id records ``{"prompt_ids", "completion_ids"}``, the sequence-level transfer set's
    form). A record longer than ``block_size + 1`` tokens is cut at the end, like a long
    completion: targets past the cut are lost."""
    rows, ys, plens = [], [], []
    for i, r in enumerate(records):
        seq, target, plen = _record_tokens(r, tokenizer, f"{name}: record {i}")
        seq, target = seq[: block_size + 1], target[: block_size + 1]
        if len(seq) < 2:
            continue
        x = seq[:-1] + [tokenizer.eos_id] * (block_size + 1 - len(seq))
        # y[t] = seq[t+1] where seq[t+1] is a target token; prompt, other turns, padding: -100
        y = [seq[t + 1] if t + 1 < len(seq) and target[t + 1] else IGNORE_INDEX for t in range(block_size)]
        rows.append(x)
        ys.append(y)
        plens.append(min(plen, block_size - 1) if plen else 0)
        if max_blocks is not None and len(rows) >= max_blocks:
            break
    if not rows:
        raise DataError(f"{name}: no usable record.")
    ds = TokenDataset(torch.tensor(rows), torch.tensor(ys), torch.tensor(plens), tokenizer.vocab_size, name)
    if ds.targets() == 0:
        raise DataError(f"{name}: every completion was cut off by data.block_size={block_size}; raise it.")
    return ds


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file; a line over the ``jsonl_line`` limit (16 MiB), not
    UTF-8, or not a JSON object is one :class:`DataError` naming the line."""
    out = []
    for n, line in _jsonl_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{path}:{n}: not JSON ({type(e).__name__}: {str(e)[:80]}).") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: a record must be a JSON object.")
        out.append(rec)
    if not out:
        raise DataError(f"{path} holds no records.")
    return out


def _jsonl_lines(path: Path):
    """``(line number, text)`` of a regular file, each line read with a bounded buffer."""
    limit = LIMITS["jsonl_line"]
    check_regular(path, "text")
    with open(path, "rb") as f:
        for n in itertools.count(1):
            raw = f.readline(limit + 1)
            if not raw:
                return
            if len(raw) > limit:
                raise DataError(f"{path}:{n}: the line is longer than {limit >> 20} MiB; split the record "
                                "(a record is cut to data.block_size tokens anyway).")
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line).") from None


def _ids(value, tokenizer, where: str, key: str) -> list[int]:
    """Token ids given in a record: a list of integers inside the vocabulary."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: {key} must be a list of integer token ids.")
    bad = [v for v in value if not 0 <= v < tokenizer.vocab_size]
    if bad:
        raise DataError(f"{where}: {key} holds {bad[0]}, outside the tokenizer's {tokenizer.vocab_size} tokens.")
    return value


def _need_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("Reading a Hugging Face dataset needs the datasets package: pip install datasets.") from None
    return datasets


def is_hf_dataset(p: Path) -> bool:
    """A ``save_to_disk`` folder, a folder of ``.parquet`` files, or a ``.parquet`` /
    ``.arrow`` file."""
    if p.is_dir():
        return any((p / f).is_file() for f in ("state.json", "dataset_info.json", "dataset_dict.json")) \
            or any(p.glob("*.parquet"))
    return p.suffix in HF_SUFFIXES


def open_hf_dataset(p: Path):
    """A ``datasets.Dataset`` from local files only (nothing from the hub)."""
    datasets = _need_datasets()
    state = p / "state.json"
    if state.is_file() and json.loads(state.read_text()).get("_data_files") == []:
        raise DataError(f"{p}: the dataset has no rows.")  # datasets itself fails on it with an IndexError
    try:
        if p.is_dir() and not any(p.glob("*.parquet")):
            ds = datasets.load_from_disk(str(p))
        else:
            files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)]
            builder = HF_SUFFIXES[Path(files[0]).suffix]
            ds = datasets.load_dataset(builder, data_files=files, split="train")
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{p}: cannot be read as a Hugging Face dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{p} holds the splits {sorted(ds)}; point data.train / data.val at one split's folder "
                        f"(e.g. {p / sorted(ds)[0]}).")
    if len(ds) == 0:
        raise DataError(f"{p}: the dataset has no rows.")
    return ds


#: the record fields and the config key that renames each
COLUMN_KEYS = {"text": "data.text_column", "prompt": "data.prompt_column", "completion": "data.completion_column",
               "messages": "data.messages_column"}


def _pick_columns(available: list[str], columns: dict[str, str] | None, name: str) -> dict[str, str]:
    """``{record field: column}`` for a table with ``available`` columns."""
    if not columns:
        if "messages" in available:
            columns = {"messages": "messages"}
        elif "prompt" in available and "completion" in available:
            columns = {"prompt": "prompt", "completion": "completion"}
        elif "text" in available:
            columns = {"text": "text"}
        else:
            raise DataError(f"{name}: no 'messages', 'prompt' and 'completion', or 'text' column among "
                            f"{available}; name the columns with data.messages_column, data.prompt_column and "
                            "data.completion_column, or data.text_column.")
    for field, col in columns.items():
        if col not in available:
            raise DataError(f"{name}: no column {col!r} ({COLUMN_KEYS[field]}); the columns are {available}."
                            + did_you_mean(col, available))
    return columns


def _renamed(records: Iterable[dict], columns: dict[str, str], name: str) -> Iterator[dict]:
    """JSONL records with ``columns`` renamed to the record fields (checked per record)."""
    for i, r in enumerate(records):
        missing = [c for c in columns.values() if c not in r]
        if missing:
            field = next(f for f, c in columns.items() if c == missing[0])
            raise DataError(f"{name}: record {i} has no {missing[0]!r} ({COLUMN_KEYS[field]}); its keys are "
                            f"{sorted(r)}." + did_you_mean(missing[0], r))
        yield {f: r[c] for f, c in columns.items()}


def load_records(p: Path, columns: dict[str, str] | None = None) -> Iterable[dict]:
    """The records of a ``.jsonl`` file or a local Hugging Face dataset, as record fields
    (``text`` / ``prompt`` + ``completion`` / ``messages``)."""
    if p.suffix == ".jsonl" and p.is_file():
        recs = read_jsonl(p)
        return _renamed(recs, columns, p.name) if columns else recs
    ds = open_hf_dataset(p)
    cols = _pick_columns(list(ds.column_names), columns, p.name)
    ds = ds.select_columns(list(dict.fromkeys(cols.values())))
    return ({f: row[c] for f, c in cols.items()} for row in ds)


def load_text_dataset(path: str, tokenizer, block_size: int, prompt_tokens: int = 16,
                      separator: str | None = None, max_blocks: int | None = None,
                      columns: dict[str, str] | None = None) -> TokenDataset:
    """A :class:`TokenDataset` from a ``.txt`` / ``.jsonl`` file, a folder of text files, or a
    local Hugging Face dataset (see the module docstring); ``columns`` maps record fields
    (``text``, ``prompt``, ``completion``, ``messages``) to the columns that hold them."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Text data {path!r} not found.")
    if (p.is_file() and p.suffix == ".jsonl") or is_hf_dataset(p):
        return records_dataset(load_records(p, columns), tokenizer, block_size, p.name, max_blocks)
    if columns:
        raise DataError(f"{p.name}: {', '.join(COLUMN_KEYS[f] for f in columns)} name columns of a .jsonl file or a "
                        "Hugging Face dataset; this is plain text.")
    return pack_text(read_documents(p, separator), tokenizer, block_size, prompt_tokens, p.name, max_blocks)
