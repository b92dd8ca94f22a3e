"""The scaling benchmark's smoke run on a few arith questions: every method runs through the
search loop, every finding gets a verdict from the measured data, the page and figures are
written from the JSON, and --from re-renders them without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_utils import load_bench

VERDICTS = {"reproduced", "not reproduced", "reversed", "not run"}


def test_smoke_run_and_rerender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("scaling")
    doc = tmp_path / "scaling.md"
    doc.write_text("old results\n" + bench.NOTES_MARKER + "\nnotes kept\n")
    out = tmp_path / "scaling.json"
    first = bench.main(["--dataset", "arith:test:4", "--pool", "8", "--budgets", "4", "--boot", "20",
                        "--json", "--out", str(out), "--doc", str(doc)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["benchmark"] == "scaling" and line["questions"] == 4 and line["pool"] == 8
    data, res = first["data"], first["analysis"]
    labels = {r["label"] for r in data["runs"]}
    assert {"beam M=4", "beam M=√N", "lookahead k=1", "lookahead k=3", "dvts M=4", "revision", "auto"} <= labels
    for r in data["runs"]:
        assert len(r["correct"]) == 4 and r["errors"] == 0, r
        # no method spends more than its budget on average (auto: the batch's bank)
        assert sum(r["generations"]) <= 4 * r["budget"]
    assert all(len(p["candidates"]) == 8 for p in data["pool"])
    assert {f["verdict"] for f in res["findings"]} <= VERDICTS and len(res["findings"]) == 8
    # the weighted best-of-N curve at N = pool size is the pool's own vote: no resampling noise
    full = res["curves"]["best_of_n weighted"]["8"]["accuracy"]
    assert 0.0 <= full <= 1.0
    text = doc.read_text()
    assert "old results" not in text and "notes kept" in text and "| Beam search beats best-of-N at small budgets" in text
    pngs = sorted(p.name for p in tmp_path.glob("scaling_*.png"))
    assert pngs == ["scaling_compute_optimal.png", "scaling_revisions.png", "scaling_search.png"]
    # re-render from the JSON alone: same findings, nothing run
    doc.write_text("stale\n" + bench.NOTES_MARKER + "\nnotes kept\n")
    again = bench.main(["--from", str(out), "--boot", "20", "--json", "--doc", str(doc)])
    assert [f["verdict"] for f in again["analysis"]["findings"]] == [f["verdict"] for f in res["findings"]]
    assert "stale" not in doc.read_text()
