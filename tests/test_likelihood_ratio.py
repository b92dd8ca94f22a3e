"""The likelihood-ratio probe (docs/quality.md) runs end to end on the built-in models and prints
one JSON line whose AUCs are probabilities (or NaN when no question has both a right and a wrong
sample)."""

from __future__ import annotations

import json
import math

import pytest


def test_probe_runs_and_reports_every_score(capsys: pytest.CaptureFixture[str]) -> None:
    from ponder.training.likelihood_ratio import main

    out = main(["--questions", "6", "--samples", "4"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["questions"] == 6 and line["samples"] == 4 and 0.0 <= line["pass_at_1"] <= 1.0
    assert set(out) == set(line["within_question_auc"]) and "large - policy mean" in out
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in out.values())
