"""The arena: battles and votes through the API into SQLite, refusals, and the report's
statistics (Wilson intervals, Bradley-Terry) and picture."""

import json
import math
import sqlite3

import pytest
from test_serve import call

from tinygpt.cli import main
from tinygpt.serve.report import bradley_terry, standings, wilson
from tinygpt.serve.votes import Vote, Votes


@pytest.fixture(scope="module")
def models(serve_run):
    from tinygpt.serve import load_models

    return load_models([str(serve_run)], device="cpu", dtype="fp32")


def test_a_battle_and_its_vote_land_in_sqlite_and_names_are_revealed_only_after(models, tmp_path):
    votes = tmp_path / "votes.sqlite"
    battle, = call(models, [("POST", "/arena/battle", {"prompt": "the cat", "max_tokens": 5}, None)],
                   votes=str(votes))
    shown = battle.json()
    assert set(shown) == {"battle", "left", "right"}   # no names before the vote
    answers = call(models, [
        ("POST", "/arena/vote", {"battle": shown["battle"], "verdict": "right",
                                 "ratings": {"left": {"fluency": 2}, "right": {"coherence": 5, "relevance": 4}}}, None),
        ("POST", "/arena/vote", {"battle": shown["battle"], "verdict": "left"}, None),
        ("POST", "/arena/vote", {"battle": "nope", "verdict": "left"}, None),
        ("POST", "/arena/vote", {"battle": shown["battle"], "verdict": "maybe"}, None),
        ("POST", "/arena/vote", {"battle": shown["battle"], "verdict": "tie", "ratings": {"left": {"fluency": 9}}},
         None)], votes=str(votes))
    assert [a.status_code for a in answers] == [200, 409, 404, 400, 400]
    names = answers[0].json()
    assert sorted(names.values()) == ["tiny temperature=0.7", "tiny temperature=1.0"]
    with sqlite3.connect(votes) as db:
        (verdict, ratings, left_name, left_text, right_text), = db.execute(
            "SELECT v.verdict, v.ratings, b.left_name, b.left_text, b.right_text FROM votes v "
            "JOIN battles b ON b.id = v.battle_id")
    assert (verdict, left_name, left_text, right_text) == ("right", names["left"], shown["left"], shown["right"])
    assert json.loads(ratings) == {"left": {"fluency": 2}, "right": {"coherence": 5, "relevance": 4}}
    recorded, = Votes(votes).read()
    assert recorded.winner == names["right"] and recorded.ratings[names["left"]] == {"fluency": 2}


def test_the_arena_is_off_without_a_votes_file(models):
    battle, = call(models, [("POST", "/arena/battle", {"prompt": "the cat"}, None)])
    assert battle.status_code == 400 and "--votes FILE" in battle.json()["error"]["message"]


def test_wilson_and_bradley_terry_match_their_closed_forms():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)   # the textbook 95% Wilson interval of 8/10
    assert all(math.isnan(x) for x in wilson(0, 0))
    votes = [Vote("a", "b", "a", "left", {})] * 3 + [Vote("a", "b", "b", "right", {})]
    p = bradley_terry(["a", "b"], votes)
    assert p[0] / p[1] == pytest.approx(3.0, rel=1e-3)   # two players: the odds are the win ratio
    ties = [Vote("a", "b", None, "tie", {})] * 4
    p = bradley_terry(["a", "b"], ties)
    assert p[0] == pytest.approx(p[1])


def test_the_report_ranks_prints_and_draws(tmp_path, capsys):
    votes = Votes(tmp_path / "v.sqlite")
    for k in range(12):   # "strong" wins 9 of 12 against "weak", with ratings
        battle = votes.add_battle("p", ("strong", {}, "x"), ("weak", {}, "y"))
        votes.vote(battle, "left" if k < 9 else "right", {"left": {"fluency": 4}, "right": {"fluency": 2}})
    rows = standings(votes.read())
    assert [r.name for r in rows] == ["strong", "weak"] and rows[0].elo > 1000 > rows[1].elo
    assert (rows[0].wins, rows[0].losses, rows[0].ratings["fluency"]) == (9, 3, 4.0)
    assert main(["arena", "report", str(tmp_path / "v.sqlite"), "--out", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "| strong | 12 | 9 | 3 | 0 | 75% (47%-91%) |" in out
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
