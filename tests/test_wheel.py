"""The wheel carries what a user needs: built from this checkout and installed into a fresh venv
outside it, ``ponder serve --demo`` answers with the built-in arith model (package data of
``ponder.artifacts``) and ``ponder bench`` finds its scripts (``ponder.benchmarks``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheel_in_a_fresh_venv_serves_the_demo(tmp_path: Path) -> None:
    def run(*cmd: str | Path, timeout: float = 900) -> str:
        r = subprocess.run([str(c) for c in cmd], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("ponder-*.whl")
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    pip = tmp_path / "venv" / "bin" / "pip"
    run(pip, "install", "-q", "torch==2.13.0")  # exactly pinned first, as ./run does (no CUDA build)
    run(pip, "install", "-q", wheel)
    ponder = tmp_path / "venv" / "bin" / "ponder"
    out = run(ponder, "serve", "--port", "0", "--demo", "Compute 5 + 8 + 3 + 7 * 7.", timeout=300)
    assert "Answer: 65" in out
    assert "usage: ponder bench engine" in run(ponder, "bench", "engine", "--help", timeout=120)
