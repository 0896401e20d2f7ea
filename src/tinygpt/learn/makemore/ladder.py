"""The comparison table every rung adds its row to: ``ladder.json`` (the data), ``ladder.md``
and ``ladder.png`` (a bar chart of test loss) in the output folder.

A row is replaced when its rung runs again. Rows made on different word lists would not
compare, so ``ladder.json`` keeps one table per word list, and the Markdown and the picture
show the table of the words just trained on; switching data loses no earlier table.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...analysis import pictures
from ...checkpoint import atomic_write_text

ORDER = ("bigram (counts)", "bigram (neural net)", "mlp", "mlp-bn", "mlp-bn (manual backward)", "wavenet", "gpt")


def add_rows(out: Path, data: str, new: list[dict]) -> tuple[Path, Path]:
    """Add or replace the ``new`` rows (keys: rung, params, train, val, test, seconds, steps) in
    ``out``'s table of ``data``; write the JSON, Markdown and PNG once."""
    path = out / "ladder.json"
    tables = json.loads(path.read_text())["tables"] if path.is_file() else {}  # {word list: rows}
    rungs = {row["rung"] for row in new}
    rows = [r for r in tables.get(data, []) if r["rung"] not in rungs] + new
    rows.sort(key=lambda r: (ORDER.index(r["rung"]) if r["rung"] in ORDER else len(ORDER), r["rung"]))
    tables[data] = rows
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"tables": tables}, indent=1) + "\n")
    atomic_write_text(out / "ladder.md", markdown(data, rows))
    return out / "ladder.md", draw(data, rows, out / "ladder.png")


def markdown(data: str, rows: list[dict]) -> str:
    lines = [f"# makemore ladder on {data}", "",
             "| rung | parameters | train | val | test | steps | time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rung']} | {r['params']:,} | {r['train']:.4f} | {r['val']:.4f} | {r['test']:.4f} "
                     f"| {r['steps']:,} | {r['seconds']:.1f} |")
    lines += ["", "Losses are mean cross-entropy in nats per character (each word's end included)."]
    return "\n".join(lines) + "\n"


def draw(data: str, rows: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 1.2 + 0.55 * len(rows)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ys = range(len(rows))[::-1]  # first rung on top
    tests = [r["test"] for r in rows]
    bars = ax.barh(list(ys), tests, color="#6baed6")
    best = min(tests)
    for bar, r in zip(bars, rows):
        if r["test"] == best:
            bar.set_color("#2171b5")
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{r['test']:.3f}   {r['params']:,} params, {r['seconds']:.0f} s", va="center", fontsize=9)
    ax.set_yticks(list(ys), [r["rung"] for r in rows])
    low = min(tests) - 0.15
    ax.set_xlim(max(0.0, low), max(tests) + 0.45)  # the differences matter, not the distance from zero
    ax.set_xlabel("test loss (nats per character, lower is better)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"makemore ladder on {data}", fontsize=11)
    return pictures.save(fig, path)
