"""``tinygpt makemore``: character-level name models, rung by rung, into one comparison table."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import add_command
from ..console import log
from ..learn.makemore.config import MakemoreConfig


@dataclass
class MakemoreCommand:
    rung: MakemoreConfig = field(default_factory=MakemoreConfig)


def add_parser(sub) -> None:
    add_command(sub, "makemore", MakemoreCommand, run,
                help="character-level name models: bigram, MLP, BatchNorm, WaveNet, GPT",
                description="Train one rung of the makemore ladder on a list of words (--data: names, the built-in "
                            "91k first names, or a file with one word per line), print its train/val/test loss, "
                            "sample new words, draw its pictures and add its row to OUT/ladder.md and "
                            "OUT/ladder.png. Unset sizes take the rung's defaults, which train in under a minute "
                            "on a laptop CPU; --n-embd is each character's embedding width in the MLP rungs.")


def run(cmd: MakemoreCommand) -> int:
    from ..learn.makemore.rungs import (
        run as run_rung,  # matplotlib, for the pictures: only when run
    )

    files = []
    for cfg in cmd.rung.rungs():
        log(f"== makemore {cfg.model}" + (" (manual backward)" if cfg.backward == "manual" else ""))
        results, files = run_rung(cfg, log)
        for r in results:
            print(f"{r.rung}: {r.params:,} parameters, {r.steps:,} steps in {r.seconds:.1f}s; "
                  f"loss train {r.train:.4f}  val {r.val:.4f}  test {r.test:.4f}")
            if r.samples:
                print(f"  samples: {', '.join(r.samples)}")
            for path in r.pictures:
                log(f"wrote {path}")
    for path in files:
        log(f"wrote {path}")
    return 0
