"""`ponder bench chaos` in small: real processes are killed, and the numbers it reports say so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench_utils import BENCHMARKS, load_bench


def test_chaos_quick_kills_and_scheduler_restart(tmp_path: Path) -> None:
    doc = tmp_path / "ops.md"
    doc.write_text("# ops\n<!-- results -->\nold\n<!-- /results -->\nkept\n")
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "chaos.py"), "--workers", "2", "--kills", "2", "--scenarios", "kills,scheduler,streams",
         "--jobs", "12", "--streams", "40", "--logs", str(tmp_path / "logs"), "--doc", str(doc)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    k = r["kills"]
    assert k["jobs"] == 12 and k["single_finals"] == 12 and k["failed"] == 0
    assert r["scheduler_kill"]["finals"] == r["scheduler_kill"]["jobs"] == 10
    s = r["streams"]
    assert s["errors"] == 0 and s["finals"] == 40 and s["submit_to_started_ms"]["p99"] > 0
    assert r["tracebacks_in_logs"] == 0
    # the processes really ran (and were really killed): one log per start
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
    assert sum("worker" in n for n in logs) >= 2 + k["kills"] and sum("scheduler" in n for n in logs) == 2
    text = doc.read_text()
    assert "old" not in text and "kept" in text and "12 single finals" in text
    assert json.loads((tmp_path / "ops.json").read_text())["kills"]["jobs"] == 12


def test_results_block_reports_failures_as_they_are() -> None:
    chaos = load_bench("chaos")
    r = {"command": "x", "workers": 3, "lease_s": 3.0, "wall_s": 10.0, "tracebacks_in_logs": 2,
         "redis_restart_lost": {"down_s": 3.0, "in_flight": 10, "new_question_answered_after_s": None,
                                "completed": 1, "failed_visibly_with_job_id": 7, "failed_without_job_id": 2,
                                "hung": True}}
    block = chaos.results_block(r)
    assert "tracebacks in all the processes' logs: 2" in block
    assert "no new question answered within 60 s" in block and "2 failed without a job id; hung: True" in block
