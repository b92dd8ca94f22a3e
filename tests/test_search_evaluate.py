"""The evaluation script: dataset parsing (GSM8K and MATH-500 fields), grading, per-group
accounting, and the command line end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import ScriptedPolicy, ScriptedVerifier, StepScript
from ponder.proto.errors import InvalidArgument
from ponder.evaluation.evaluate import Result, evaluate, format_attempts, format_markdown, format_table, load_dataset, main


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_load_dataset_gsm8k_and_math(tmp_path: Path) -> None:
    gsm = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "Q1?", "answer": "work 3+4 = 7\n#### 7"},
        {"question": "Q2?", "answer": "#### 1,250"},
    ])
    math = write_jsonl(tmp_path / "m.jsonl", [{"problem": "P1?", "answer": "\\frac{1}{2}", "level": 3}])
    assert [(i.question, i.gold) for i in load_dataset(gsm)] == [("Q1?", "7"), ("Q2?", "1250")]
    assert load_dataset(gsm, limit=1)[0].gold == "7"
    assert load_dataset(math)[0].gold == "\\frac{1}{2}"
    with pytest.raises(InvalidArgument):
        load_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidArgument):
        load_dataset(write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}]))


def test_evaluate_grades_and_accounts(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}?", "answer": f"#### {g}"} for i, g in enumerate(["7", "9", "0.5", "7"])])
    # every sampled answer is 7, so the questions whose gold is 7 are right
    policy = ScriptedPolicy(StepScript(steps=2, answers=("7",)))
    results = evaluate(policy, ScriptedVerifier(), data, ["best_of_n", "beam", "revision"], [2, 4], limit=None, progress=False)
    assert [(r.strategy, r.budget) for r in results] == [
        ("best_of_n", 2), ("best_of_n", 4), ("beam", 2), ("beam", 4), ("revision", 2), ("revision", 4)]
    for r in results:
        assert r.questions == 4 and r.correct == 2 and r.accuracy == 0.5 and r.failed == 0
        assert r.generations == r.budget
        assert r.tokens > 0 and r.flops > 0 and r.wall_s > 0
        assert [a["correct"] for a in r.answers] == [True, False, False, True]
    table = format_table(results)
    assert "best_of_n" in table and "50.0%" in table
    md = format_markdown([r.as_dict() for r in results]).splitlines()
    assert len(md) == 2 + len(results) and md[2].startswith("| best_of_n | 2 | 2/4 | 2.0 |")
    beam4 = results[3]
    ratio = beam4.flops / results[1].flops
    assert md[5].split(" | ")[7] == f"{ratio:.2f}"  # beam's FLOPs against best-of-N at N=4
    assert md[6].split(" | ")[7] == f"{results[4].flops / results[0].flops:.2f}"


def test_evaluate_records_strategies_that_cannot_run(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "answer": "#### 7"}])
    (res,) = evaluate(ScriptedPolicy(), None, data, ["beam"], [4], progress=False)
    assert res.failed == 1 and res.correct == 0 and "verifier" in res.answers[0]["error"]


def test_main_end_to_end(tmp_path: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 1+1?", "answer": "#### 2"}] * 2)
    out = tmp_path / "eval.json"
    rc = main(["--dataset", str(data), "--model", str(tiny_llama_dir), "--backend", "hf", "--verifier", "random",
               "--strategies", "best_of_n,beam", "--budgets", "2", "--limit", "2", "--max-steps", "2",
               "--max-step-tokens", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    last = json.loads(printed[-1])
    assert [row["strategy"] for row in last["table"]] == ["best_of_n", "beam"]
    saved = json.loads(out.read_text())
    assert all(r["questions"] == 2 and r["generations"] == 2 for r in saved["results"])
    assert saved["verifier"].startswith("random-value-head")


def test_rows_per_question_sizes_the_groups() -> None:
    from ponder.evaluation.evaluate import rows_per_question

    assert rows_per_question("best_of_n", 16, {}) == 16 and rows_per_question("beam", 4, {}) == 4
    assert rows_per_question("revision", 16, {}) == 1  # one chain, one sequence at a time
    assert rows_per_question("hybrid", 16, {}) == 4  # √16 chains of √16 attempts
    assert rows_per_question("hybrid", 16, {"sequential_ratio": 0.0}) == 16


def test_pass_at_1_by_attempt_counts_each_attempt_of_every_chain() -> None:
    def cand(attempt: int, correct: bool) -> dict[str, object]:
        return {"answer": "1", "score": None, "correct": correct, "attempt": attempt, "node": 0}

    hybrid = Result("hybrid", 4, answers=[
        # two chains of two attempts per question, in the order they finished
        {"index": 0, "candidates": [cand(0, False), cand(0, True), cand(1, True), cand(1, True)]},
        {"index": 1, "candidates": [cand(0, False), cand(0, False), cand(1, False), cand(1, True)]},
        {"index": 2, "error": "lost"},  # a failed question has no candidates
    ])
    assert hybrid.pass_at_1_by_attempt() == [0.25, 0.75]
    assert hybrid.as_dict()["pass_at_1_by_attempt"] == [0.25, 0.75]
    plain = Result("best_of_n", 2, answers=[{"index": 0, "candidates": [cand(0, True), cand(0, False)]}])
    assert plain.pass_at_1_by_attempt() == []
    assert format_attempts([plain, hybrid]) == "hybrid N=4: pass@1 by attempt 1:0.250 2:0.750"
