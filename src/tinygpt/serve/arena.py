"""Blind side-by-side evaluation: two anonymised answers to one prompt, a person's verdict.

The contestants are the served models, each at the arena's sampling settings; one served
model becomes two contestants that differ in temperature. A battle draws two contestants
and which sits left at random, generates both answers through the engines (continuous
batching, like any request), records the battle, and shows the texts without names; the
vote (left, right, tie or both bad, with 1-5 ratings of each side's fluency, coherence and
relevance) is recorded, then the names are revealed. ``tinygpt arena report`` ranks them.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..data import instruct as ins
from ..generation.sampling import Sampling
from .protocol import ApiError
from .votes import ASPECTS, VERDICTS, Votes

ARENA_SETTINGS = {"temperature": 0.8}
ONE_MODEL_SETTINGS = ({"temperature": 0.7}, {"temperature": 1.0})   # one model against itself


@dataclass(frozen=True)
class Contestant:
    label: str          # what the report calls it: the model's name, with its settings when they tell it apart
    model: object       # the ServedModel
    settings: dict

    def sampling(self, max_tokens: int, stop_ids: tuple[int, ...]) -> Sampling:
        return Sampling(**self.settings, max_new_tokens=max_tokens, stop_ids=stop_ids,
                        seed=random.SystemRandom().randrange(1 << 62))


def contestants(models: list) -> list[Contestant]:
    if len(models) == 1:
        m = models[0]
        return [Contestant(f"{m.name} temperature={s['temperature']}", m, s) for s in ONE_MODEL_SETTINGS]
    return [Contestant(m.name, m, ARENA_SETTINGS) for m in models]


class Arena:
    def __init__(self, models: list, votes: Votes):
        self.votes, self.contestants = votes, contestants(models)
        self._sides = random.SystemRandom()   # who sits left must not be guessable

    @staticmethod
    def chat(model) -> bool:
        """An instruction-tuned model answers in its template; a base model continues the text."""
        return model.template is not None and ins.recorded_template(model.lm.config) is not None

    def prompt_for(self, model, prompt: str) -> str:
        if self.chat(model):
            return ins.chat_prompt(model.template, [{"role": "user", "content": prompt}], model.lm.tokenizer)
        return prompt

    async def battle(self, prompt: str, max_tokens: int,
                     answer: Callable[[object, str, Sampling], Awaitable[str]]) -> dict:
        left, right = self._sides.sample(self.contestants, 2)

        def ask(c: Contestant):
            tok = c.model.lm.tokenizer
            return answer(c.model, self.prompt_for(c.model, prompt),
                          c.sampling(max_tokens, (tok.eot_id,) if tok.eot_id is not None else ()))

        texts = await asyncio.gather(ask(left), ask(right))
        battle = self.votes.add_battle(prompt, (left.label, left.settings, texts[0]),
                                       (right.label, right.settings, texts[1]))
        return {"battle": battle, "left": texts[0], "right": texts[1]}

    def vote(self, body) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("battle"), str):
            raise ApiError(400, "a vote names its battle: {battle, verdict, ratings}", param="battle")
        verdict = body.get("verdict")
        if verdict not in VERDICTS:
            raise ApiError(400, f"verdict must be one of {', '.join(VERDICTS)}", param="verdict")
        ratings = body.get("ratings") or {}
        if not isinstance(ratings, dict) or set(ratings) - {"left", "right"} or not all(
                isinstance(r, dict) and set(r) <= set(ASPECTS)
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in r.values())
                for r in ratings.values()):
            raise ApiError(400, f"ratings must be {{left: {{aspect: 1-5}}, right: ...}} with aspects among "
                                f"{', '.join(ASPECTS)}", param="ratings")
        try:
            left, right = self.votes.vote(body["battle"], verdict, ratings)
        except KeyError:
            raise ApiError(404, "no such battle; start one first", param="battle") from None
        except sqlite3.IntegrityError:
            raise ApiError(409, "this battle already has its vote", param="battle") from None
        return {"left": left, "right": right}
