"""``tinygpt bench generate`` runs end to end and reports every engine it has (speed is measured, not tested)."""

from tinygpt.cli import main


def test_bench_generate_reports_a_table_with_ratios(capsys):
    assert main(["bench", "generate", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--max-new-tokens", "4",
                 "--prompt-tokens", "8", "--rounds", "1", "--batches", "1,2", "--engines", "tinygpt,transformers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["engine", "batch", "1", "batch", "2"]
    rows = {line[:20].strip(): line[20:].split() for line in lines[2:6]}
    assert set(rows) == {"tinygpt fp32", "tinygpt bf16", "transformers fp32", "transformers bf16"}
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values())
    assert "batch 2: tinygpt bf16 / transformers bf16 = " in out
    assert "batch-1 ceiling, bf16 weights:" in out and "measured read bandwidth" in out
