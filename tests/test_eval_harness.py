"""tinygpt against EleutherAI's lm-evaluation-harness, offline: HellaSwag-format multiple choice
equals the harness's Hugging Face backend example by example, and the ``tinygpt`` model class
gives the harness the same answers as that backend on every kind of request."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import make_run
from test_eval_choice import HELLASWAG_DOCS, PLAIN_DOCS, write_jsonl

from tinygpt.cli import main
from tinygpt.eval import multiple_choice, read_questions
from tinygpt.generation import load

TEXTS = [
    {"text": "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were "
             "striking thirteen. The fox jumps again and again, and the dog sleeps on. Call me Ishmael. Then the end "
             "came, quietly. So it goes. The end, or so they say.",  # 64 GPT-2 tokens: two whole windows
     "question": "Q: What jumps?\nA:", "answer": " the fox"},
    {"text": "Short one.", "question": "Q: Two plus two?\nA:", "answer": " four"},
]
TASKS = ["hs_local", "plain_local", "roll_local", "gen_local"]


def task_files(root: Path) -> Path:
    """Four local tasks, one per kind of request: the harness's own HellaSwag task on a local
    file, plain multiple choice, rolling log-likelihood (perplexity) and generation."""
    import lm_eval

    hellaswag = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
    data = {"hs": write_jsonl(root / "hs.jsonl", HELLASWAG_DOCS), "plain": write_jsonl(root / "plain.jsonl", PLAIN_DOCS),
            "texts": write_jsonl(root / "texts.jsonl", TEXTS)}
    cache = root / "datasets"

    def local(name):
        return (f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  cache_dir: {cache}\n  data_files:\n"
                f"    validation: {data[name]}\nvalidation_split: validation\n")

    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "hs_local.yaml").write_text(f"include: {hellaswag}\ntask: hs_local\n{local('hs')}training_split: null\n")
    (tasks / "plain_local.yaml").write_text(
        f"task: plain_local\n{local('plain')}output_type: multiple_choice\ndoc_to_text: '{{{{context}}}}'\n"
        "doc_to_choice: '{{endings}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / "roll_local.yaml").write_text(
        f"task: roll_local\n{local('texts')}output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (tasks / "gen_local.yaml").write_text(
        f"task: gen_local\n{local('texts')}output_type: generate_until\ndoc_to_text: '{{{{question}}}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n', '.']\n  do_sample: false\n"
        "  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n")
    return tasks


def logprob(resp):
    """A sample's response: (logprob, is_greedy) for log-likelihood requests, a bare logprob for rolling ones."""
    return resp[0] if isinstance(resp, (list, tuple)) else resp


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A tiny random GPT-2-tokenizer run, its Hugging Face export, the harness's HF backend's
    samples on the four tasks, and `tinygpt lm-eval`'s on the same tasks."""
    from tinygpt.tokenizer import GPT2Tokenizer

    root = tmp_path_factory.mktemp("harness")
    make_run(root / "run", tokenizer=GPT2Tokenizer(), randomize=True, n_head=2, block_size=32, gelu="tanh")
    assert main(["export", str(root / "run"), "--to", "hf", str(root / "hf")]) == 0
    tasks = task_files(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        hf = simple_evaluate(model="hf", model_args=f"pretrained={root / 'hf'},dtype=float32", tasks=TASKS,
                             task_manager=TaskManager(include_path=str(tasks)), device="cpu", batch_size=4,
                             log_samples=True)
        argv = sys.argv
        code = main(["lm-eval", "--model", "tinygpt", "--model_args", f"run={root / 'run'}", "--tasks", ",".join(TASKS),
                     "--include_path", str(tasks), "--device", "cpu", "--batch_size", "3", "--log_samples",
                     "--output_path", str(root / "out")])
        assert code == 0 and sys.argv == argv
    results = json.loads(next((root / "out").rglob("results_*.json")).read_text())
    ours = {t: [json.loads(line) for line in next((root / "out").rglob(f"samples_{t}_*.jsonl")).open()]
            for t in TASKS}
    yield root, hf, results, ours
    shutil.rmtree(root, ignore_errors=True)


def test_acc_and_acc_norm_equal_the_harness_example_by_example(harness):
    root, hf, _, _ = harness
    lm = load(root / "run")
    for task, path in (("hs_local", root / "hs.jsonl"), ("plain_local", root / "plain.jsonl")):
        s = multiple_choice(lm, read_questions(path), batch_size=5)
        theirs = sorted(hf["samples"][task], key=lambda d: d["doc_id"])
        assert len(theirs) == len(s.examples)
        for mine, their in zip(s.examples, theirs):
            assert mine["logprobs"] == pytest.approx([r[0] for r in their["filtered_resps"]], rel=1e-5)
            assert (mine["pred"] == mine["label"]) == their["acc"]
            assert (mine["pred_norm"] == mine["label"]) == their["acc_norm"]
        assert s.acc == hf["results"][task]["acc,none"] and s.acc_norm == hf["results"][task]["acc_norm,none"]
    # Not a vacuous check: the char-length normalisation changes some answers of this model.
    hs = multiple_choice(lm, read_questions(root / "hs.jsonl"))
    assert any(e["pred"] != e["pred_norm"] for e in hs.examples)


def test_the_tinygpt_model_answers_the_harness_as_its_hf_backend_does(harness):
    _, hf, results, ours = harness
    for task in TASKS:
        theirs = sorted(hf["samples"][task], key=lambda d: d["doc_id"])
        mine = sorted(ours[task], key=lambda d: d["doc_id"])
        for m, t in zip(mine, theirs, strict=True):
            if task == "gen_local":
                assert m["filtered_resps"] == t["filtered_resps"]  # greedy text, cut at the stop strings
            else:  # the samples file keeps (logprob, is_greedy) as strings; the in-memory ones as numbers
                assert [float(logprob(r)) for r in m["filtered_resps"]] == pytest.approx(
                    [float(logprob(r)) for r in t["filtered_resps"]], rel=1e-5)
        for metric, value in hf["results"][task].items():
            if "stderr" not in metric and isinstance(value, float):
                assert results["results"][task][metric] == pytest.approx(value, rel=1e-5)


def test_lm_eval_runs_a_local_task_end_to_end(harness):
    root, _, results, ours = harness
    assert set(TASKS) <= results["results"].keys() and results["config"]["model"] == "tinygpt"
    # Rolling log-likelihood scores every token of the text once, the first after end-of-text,
    # in disjoint windows of the 32-token context: for a text of exactly two windows that is
    # tinygpt's own non-overlapping score of end-of-text + the text.
    from tinygpt.eval import score

    lm = load(root / "run")
    ids = lm.tokenizer.encode(TEXTS[0]["text"])
    assert len(ids) == 2 * lm.model.config.block_size
    rolled = logprob(next(d for d in ours["roll_local"] if d["doc_id"] == 0)["filtered_resps"][0])
    assert -float(rolled) == pytest.approx(score(lm, [lm.tokenizer.eot_id] + ids).loss_sum, rel=1e-5)
    gen = next(d for d in ours["gen_local"] if d["doc_id"] == 0)["filtered_resps"][0]
    assert gen == lm.generate(TEXTS[0]["question"], 8, greedy=True, stop=["\n", "."])[0]


def test_lm_eval_without_the_harness_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # import fails as if not installed
    assert main(["lm-eval", "--tasks", "x"]) == 1
    assert "pip install 'tinygpt[eval]'" in capsys.readouterr().err


def test_lm_eval_bad_input_is_one_line(harness, capsys):
    root = harness[0]
    assert main(["lm-eval", "--model", "tinygpt", "--model_args", f"run={root / 'run'}", "--tasks", "no_such_task",
                 "--include_path", str(root / "tasks"), "--device", "cpu"]) == 1
    assert "error: lm-eval: Tasks not found: no_such_task" in capsys.readouterr().err
