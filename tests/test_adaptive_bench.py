"""The adaptive-budgets benchmark's smoke run on a few arith questions: every run reported, the
figures consistent with each other, one JSON last line, the doc block and the plot written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_utils import load_bench


def test_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("adaptive")
    doc = tmp_path / "adaptive.md"
    doc.write_text("# title\n\n<!-- results -->\nold\n<!-- /results -->\n\nnotes kept\n")
    out, png = tmp_path / "adaptive.json", tmp_path / "adaptive.png"
    report = bench.main(["--dataset", "arith:test:6", "--budget", "8", "--auto-budgets", "4", "--boot", "50",
                         "--json", "--out", str(out), "--plot", str(png), "--doc", str(doc)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["benchmark"] == "adaptive" and line["questions"] == 6
    runs = report["runs"]
    assert set(runs) == {"best_of_n fixed", "best_of_n adaptive", "auto 4"}
    assert runs["best_of_n fixed"]["generations"] == 8 and runs["best_of_n fixed"]["agreement_with_fixed"] == 1.0
    for r in runs.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert r["total_generations"] <= r["nominal_total"]  # the bank never overspends a batch
    assert runs["auto 4"]["generations"] <= 4
    assert line["batch_never_overspent"] is True
    assert json.loads(out.read_text())["runs"].keys() == runs.keys()
    assert png.stat().st_size > 1000
    text = doc.read_text()
    assert "old" not in text and "notes kept" in text and "| auto 4 |" in text


def test_the_json_line_has_no_infinities() -> None:
    """A budget ratio past the whole pool is infinite, and JSON has no infinity: it prints as null."""
    from ponder.evaluation.curves import json_finite

    line = {"auto_budget_ratio": math.inf, "auto_budget_ratio_ci": [0.5, math.inf], "nested": {"x": -math.inf, "y": 1.5}, "n": 3}
    assert json_finite(line) == {"auto_budget_ratio": None, "auto_budget_ratio_ci": [0.5, None],
                                   "nested": {"x": None, "y": 1.5}, "n": 3}
