"""What the arena's votes say: win rates with confidence intervals, a Bradley-Terry ranking on
the Elo scale (with bootstrap intervals), mean ratings, and a picture.

Bradley-Terry is fitted with Hunter's MM iterations (a dozen lines of numpy) rather than a
statistics package: tinygpt depends on none, and the model is one fixed-point update. A tie
or a "both bad" counts as half a win to each side, as in LMSYS's arena.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .votes import ASPECTS, Vote

ELO_BASE, ELO_SCALE = 1000.0, 400.0


@dataclass
class Standing:
    name: str
    battles: int
    wins: int
    losses: int
    ties: int
    win_rate: float          # wins / decisive battles (nan without one)
    interval: tuple[float, float]   # Wilson 95% interval of the win rate
    elo: float               # Bradley-Terry strength on the Elo scale (1000: the average)
    elo_interval: tuple[float, float]   # bootstrap 95% interval
    ratings: dict[str, float]   # mean 1-5 rating per aspect (nan where none was given)


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def bradley_terry(names: list[str], votes: list[Vote], iterations: int = 200) -> np.ndarray:
    """Strengths p (geometric mean 1) maximising prod p_w / (p_w + p_l) over the votes."""
    index = {n: i for i, n in enumerate(names)}
    k = len(names)
    wins = np.zeros((k, k))              # wins[i, j]: i over j (ties: half each)
    for v in votes:
        a, b = index[v.a], index[v.b]
        if v.winner is None:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
        else:
            winner, loser = (a, b) if v.winner == v.a else (b, a)
            wins[winner, loser] += 1
    games = wins + wins.T
    p = np.ones(k)
    for _ in range(iterations):          # Hunter (2004): p_i <- W_i / sum_j n_ij / (p_i + p_j)
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        p = np.where(denom > 0, (wins.sum(axis=1) + 1e-3) / np.maximum(denom, 1e-12), p)   # +1e-3: no zero
        p /= np.exp(np.log(p).mean())
    return p


def standings(votes: list[Vote], *, bootstrap: int = 200, seed: int = 0) -> list[Standing]:
    """Every contestant's standing, strongest first."""
    names = sorted({v.a for v in votes} | {v.b for v in votes})
    elo = ELO_BASE + ELO_SCALE * np.log10(bradley_terry(names, votes))
    rng = np.random.default_rng(seed)
    samples = np.array([ELO_BASE + ELO_SCALE * np.log10(bradley_terry(
        names, [votes[i] for i in rng.integers(0, len(votes), len(votes))], iterations=100))
        for _ in range(bootstrap)]) if votes else np.zeros((0, len(names)))
    out = []
    for i, name in enumerate(names):
        mine = [v for v in votes if name in (v.a, v.b)]
        wins = sum(v.winner == name for v in mine)
        ties = sum(v.winner is None for v in mine)
        losses = len(mine) - wins - ties
        decisive = wins + losses
        given = {a: [v.ratings[name][a] for v in mine if a in v.ratings.get(name, {})] for a in ASPECTS}
        low, high = (np.percentile(samples[:, i], [2.5, 97.5]) if len(samples) else (math.nan, math.nan))
        out.append(Standing(name, len(mine), wins, losses, ties, wins / decisive if decisive else math.nan,
                            wilson(wins, decisive), float(elo[i]), (float(low), float(high)),
                            {a: float(np.mean(r)) if r else math.nan for a, r in given.items()}))
    return sorted(out, key=lambda s: -s.elo)


def table(rows: list[Standing]) -> str:
    """The standings as a Markdown table."""
    head = ("| contestant | battles | wins | losses | ties | win rate (95% CI) | Bradley-Terry Elo (95% CI) | "
            + " | ".join(ASPECTS) + " |")
    lines = [head, "|" + "---|" * (7 + len(ASPECTS))]
    for s in rows:
        rate = "-" if math.isnan(s.win_rate) else f"{s.win_rate:.0%} ({s.interval[0]:.0%}-{s.interval[1]:.0%})"
        aspects = " | ".join("-" if math.isnan(s.ratings[a]) else f"{s.ratings[a]:.2f}" for a in ASPECTS)
        lines.append(f"| {s.name} | {s.battles} | {s.wins} | {s.losses} | {s.ties} | {rate} | "
                     f"{s.elo:.0f} ({s.elo_interval[0]:.0f}-{s.elo_interval[1]:.0f}) | {aspects} |")
    return "\n".join(lines)


def draw(rows: list[Standing], path: str | Path, n_votes: int) -> Path:
    """Two panels: the Bradley-Terry Elo with its interval, and the mean ratings per aspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.8 + 0.8 * len(rows)), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    elo = np.array([s.elo for s in rows][::-1])
    low = np.array([s.elo_interval[0] for s in rows][::-1])
    high = np.array([s.elo_interval[1] for s in rows][::-1])
    left.barh(y, elo - ELO_BASE, left=ELO_BASE, color="#4c78a8", height=0.5)
    left.errorbar(elo, y, xerr=[elo - low, high - elo], fmt="none", ecolor="#1d2330", capsize=4)
    left.axvline(ELO_BASE, color="#888", lw=0.8)
    labels = [f"{s.name}\nElo {s.elo:.0f}" + ("" if math.isnan(s.win_rate) else
                                             f", wins {s.win_rate:.0%} of {s.wins + s.losses} decided")
              for s in rows][::-1]
    left.set_yticks(y, labels, fontsize=9)
    left.set_xlabel("Bradley-Terry strength, Elo scale (95% bootstrap interval)")
    left.set_title(f"Arena ranking from {n_votes} blind votes")
    width = 0.8 / len(ASPECTS)
    for k, aspect in enumerate(ASPECTS):
        values = [s.ratings[aspect] for s in rows][::-1]
        right.barh(y + (k - 1) * width, np.nan_to_num(values), height=width, label=aspect)
    right.set_yticks(y, [""] * len(y))
    right.set_xlim(0, 5)
    right.set_xlabel("mean rating (1-5)")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=len(ASPECTS), fontsize=8, frameon=False)
    right.set_title("Ratings")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
