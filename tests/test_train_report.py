"""`ponder train report` at a tiny size on the committed arith artifacts: it writes the page,
its figures and its data into --docs and nothing into the artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ponder.training import report


def test_fold_matches_the_search_loops_aggregation() -> None:
    steps = [0.9, 0.5, 0.7]
    assert report._fold(steps, "last") == 0.7
    assert report._fold(steps, "min") == 0.5
    assert report._fold(steps, "prod") == pytest.approx(0.9 * 0.5 * 0.7)
    assert report._fold(steps, "mean") == pytest.approx(0.7)
    assert report._fold(None, "last") == 0.0


def test_report_writes_docs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = Path(report.ART)
    before = {p: p.stat().st_mtime_ns for p in art.rglob("*")}
    docs = tmp_path / "docs"
    rc = report.main(["--questions", "6", "--samples", "4", "--prm-questions", "3", "--prm-samples", "2",
                      "--prm-rollouts", "1", "--revise-questions", "2", "--chains", "1", "--revise-steps", "2",
                      "--search-questions", "3", "--search-budgets", "2", "--docs", str(docs)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= summary["pass_at_1"] <= 1.0 and len(summary["revision_pass_at_1"]) == 2
    assert {"value head (MC)", "PRM model (MC)", "confidence", "likelihood (arith-large)"} <= set(summary["prm_auc_steps"])
    data = json.loads((docs / "quality.json").read_text())
    sel = data["prm"]["selection"]
    assert {"majority", "oracle", "value head (MC) weighted (last)", "PRM model (MC) best (min)",
            "confidence weighted (last)"} <= set(sel)
    for v in data["prm"]["verifiers"].values():
        w = v["within_question_auc"]["last"]
        assert math.isnan(w) or 0.0 <= w <= 1.0  # NaN when no tiny question holds both outcomes
    noise = data["prm"]["label_noise"]
    assert all(0.0 <= n["agreement"] <= 1.0 for n in noise.values()) and len(noise) == 2
    search = data["search"]["table"]
    assert set(search) == {"best_of_n N=2", "beam N=2"}
    assert all(row["all"]["questions"] == 3 and row["all"]["failed"] == 0 for row in search.values())
    for n, acc in sel["oracle"].items():  # no selection beats picking a right sample when one exists
        assert all(row[n] <= acc + 1e-9 for row in sel.values())
    served = data["reviser"]["service_chain"]  # the chains again as a worker runs them: 1 chain of 2
    assert len(served["pass_at_1_by_step"]) == 2 and served["verifier"] == "none"  # this reviser reads no scores
    assert all(0.0 <= v <= 1.0 for v in served["pass_at_1_by_step"])
    page = (docs / "quality.md").read_text()
    assert "## Reviser: sequential revisions" in page and "arith_best_of_n.png" in page
    assert "| pass@1, as a worker runs the chain | " in page
    assert "## Search: beam search against weighted best-of-N" in page and "Label noise" in page
    assert all((docs / f).exists() for f in ("arith_best_of_n.png", "arith_pass_rates.png", "arith_revisions.png",
                                             "arith_search.png"))
    assert {p: p.stat().st_mtime_ns for p in art.rglob("*")} == before  # the artifacts untouched
    # --only reviser: that section again (three steps now), every other one kept as it was
    rc = report.main(["--questions", "6", "--samples", "4", "--prm-questions", "3", "--prm-samples", "2",
                      "--prm-rollouts", "1", "--revise-questions", "2", "--chains", "1", "--revise-steps", "3",
                      "--search-questions", "3", "--search-budgets", "2", "--docs", str(docs), "--only", "reviser"])
    assert rc == 0
    again = json.loads((docs / "quality.json").read_text())
    assert len(again["reviser"]["pass_at_1_by_step"]) == 3 and again["rerun"] == ["reviser"]
    assert len(again["reviser"]["service_chain"]["pass_at_1_by_step"]) == 3
    assert {k: again[k] for k in ("policy", "prm", "search")} == {k: data[k] for k in ("policy", "prm", "search")}
    assert again["reviser"]["policy_pass_at_1_same_questions"] == data["reviser"]["policy_pass_at_1_same_questions"]
    assert "Rerun alone since (`ponder train report --only`): reviser." in (docs / "quality.md").read_text()
    # a kept section made with other settings, or a section that cannot run alone: refused, nothing written
    capsys.readouterr()
    assert report.main(["--questions", "7", "--docs", str(docs), "--only", "reviser"]) == 2
    assert "questions" in capsys.readouterr().err
    assert report.main(["--questions", "6", "--docs", str(docs), "--only", "search"]) == 2
    assert json.loads((docs / "quality.json").read_text()) == again
    # --render: the page again from quality.json, nothing measured (the notes below the marker kept)
    (docs / "quality.md").write_text((docs / "quality.md").read_text() + "a note of ours\n")
    (docs / "quality.json").write_text(json.dumps({**again, "reviser": {**again["reviser"], "chain_majority_accuracy": 0.123}}))
    assert report.main(["--docs", str(docs), "--render"]) == 0
    page = (docs / "quality.md").read_text()
    assert "majority over the chain: 0.123" in page and page.endswith("a note of ours\n")
    assert report.main(["--docs", str(docs), "--render", "--only", "reviser"]) == 2
    assert report.main(["--docs", str(tmp_path / "nothing"), "--render"]) == 2


def test_a_reviser_that_reads_scores_is_measured_through_the_search_loop(tmp_path: Path) -> None:
    """A reviser whose prompt shows the verifier's scores: both of its chains run through the
    search loop, scored (its own by --reviser-verifier, the worker's by the policy's default)."""
    import shutil

    reviser = tmp_path / "reviser"
    shutil.copytree(report.ART / "reviser", reviser)
    spec = json.loads((reviser / "ponder.json").read_text())
    spec |= {"attempt_template": "Attempt {index} ({score}): {results}\n", "attempt_order": "score"}
    (reviser / "ponder.json").write_text(json.dumps(spec))
    cfg = report.ReportConfig(reviser=reviser, reviser_verifier="likelihood:arith-large:uncalibrated",
                              revise_questions=2, chains=1, revise_steps=2)
    rev = report.revise_section(cfg, {})
    assert rev["reads_scores"] and rev["verifier"] == "likelihood:arith-large:uncalibrated"
    assert len(rev["pass_at_1_by_step"]) == 2 and rev["service_chain"]["verifier"] == "auto"
    assert len(rev["service_chain"]["pass_at_1_by_step"]) == 2
    assert 0.0 <= rev["chain_majority_accuracy"] <= rev["any_attempt_correct"] <= 1.0
