"""`kdistill serve-teacher`: a local teacher folder behind vLLM's completions contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, log


@app.command("serve-teacher")
def serve_teacher_cmd(
    folder: Annotated[Path, typer.Argument(help="A Hugging Face causal-LM folder (config, weights, tokenizer).")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: a free one, printed).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network "
                                           "(there is no authentication).")] = "127.0.0.1",
    name: Annotated[Optional[str], typer.Option(help="The model name clients send (default: the folder's name).")] = None,
) -> None:
    """Serve a teacher for students elsewhere: OpenAI-compatible /v1/completions with vLLM's
    prompt_logprobs (use with teacher: {kind: served, url: http://HOST:PORT/v1, model: NAME})."""
    from ..lm.serve import serve

    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        serve(folder, host, port, name, log, ready)
    except KeyboardInterrupt:
        log("Stopped.")
