"""``tinygpt attention``: what each layer and head of a model attends to, as pictures and text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..analysis import attention
from ..analysis.source import titled_model
from ..checkpoint import atomic_write_text
from ..config import add_command, section
from ..console import log
from ..device import RuntimeConfig
from ..options import OutputOptions
from ..run import RunDir
from ..source import ModelSource


@dataclass
class AttentionCommand:
    look: attention.AttentionOptions = field(default_factory=attention.AttentionOptions)
    source: ModelSource = section(ModelSource, only=("checkpoint",))
    runtime: RuntimeConfig = section(RuntimeConfig, dtype="fp32", seed=0)  # the same untrained weights each time
    output: OutputOptions = section(OutputOptions, only=("out", "json", "show"),
                                    shown={"out": "MODEL/attention for a run (--compare: the first run's), else "
                                                     "./attention"})


def add_parser(sub) -> None:
    add_command(sub, "attention", AttentionCommand, run, help="draw and report a model's attention on a text",
                description="Capture the attention weights of every layer and head for a text and draw them: one "
                            "head, each layer's heads, all heads, attention rollout and entropy per head (PNGs); "
                            "print the most-attended tokens and the heads' roles (previous token, first token, "
                            "self, induction). MODEL may be left out for --preset NAME --untrained or --compare.")


def run(cmd: AttentionCommand) -> int:
    from ..analysis import pictures  # matplotlib: only when drawing

    o, rt = cmd.look, cmd.runtime
    loading = dict(checkpoint=cmd.source.checkpoint, device=rt.device, dtype=rt.dtype)
    if o.compare:
        atts = []
        for m in o.compare:
            lm, name = titled_model(m, **loading)
            atts.append(attention.capture(lm, o.text, name))
        beside = next((m for m in o.compare if RunDir.is_run(m)), None)  # the first run's folder, not ./attention
        path = attention.compare(*atts, pictures.folder("attention", cmd.output.out, beside), o.layer or 0, o.head or 0)
        log(f"wrote {path}")
        if cmd.output.show:
            pictures.show(path)
        return 0
    lm, name = titled_model(o.model, preset=o.preset, untrained=o.untrained, seed=rt.seed, text=o.text, **loading)
    att = attention.capture(lm, o.text, name)
    result = attention.analyse(lm, att, k=o.top_tokens, layer=o.layer, seed=rt.seed)
    out = pictures.folder("attention", cmd.output.out, None if o.untrained else o.model)
    paths = attention.draw(att, out, layer=o.layer, head=o.head, residual=o.residual, heads=result["heads"])
    print(attention.format_report(result))
    for p in paths:
        log(f"wrote {p}")
    if cmd.output.json:
        atomic_write_text(cmd.output.json, json.dumps(result, indent=1) + "\n")
    if cmd.output.show:
        for p in paths:
            pictures.show(p)
    return 0
