"""``tinygpt serve``: models behind an OpenAI-compatible HTTP API, with continuous batching."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import add_command, like, section
from ..console import log
from ..device import RuntimeConfig
from ..serve import ServeConfig, create_app, load_models
from ..source import ModelSource


@dataclass
class ServeCommand:
    models: list[str] = like(ModelSource, "model", None)   # one or more, each served under its last name
    checkpoint: str = like(ModelSource, "checkpoint")
    serve: ServeConfig = section(ServeConfig)
    runtime: RuntimeConfig = section(RuntimeConfig, only=("device", "dtype", "threads"), dtype="fp32")


def add_parser(sub) -> None:
    add_command(sub, "serve", ServeCommand, run, help="serve models over an OpenAI-compatible HTTP API",
                description="Serve MODEL(s) at /v1/completions and /v1/chat/completions (OpenAI's wire format, "
                            "streaming as server-sent events), /v1/models, /health and /metrics, decoding every "
                            "model's requests together (continuous batching). Binds to 127.0.0.1 unless --host says "
                            "otherwise.")


def run(cmd: ServeCommand) -> int:
    import uvicorn

    models = load_models(cmd.models, checkpoint=cmd.checkpoint, device=cmd.runtime.device, dtype=cmd.runtime.dtype)
    app = create_app(models, cmd.serve)
    cfg = cmd.serve
    for m in models:
        chat = f"chat in the {m.template} template" if m.template else "completions only"
        log(f"serving {m.name!r} ({m.lm.device}, {str(m.lm.dtype).removeprefix('torch.')}; {chat})")
    log(f"listening on http://{cfg.host}:{cfg.port}/v1 (Ctrl+C or SIGTERM stops it; running requests finish first)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
