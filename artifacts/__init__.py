"""The trained models of the built-in arithmetic task (docs/quality.md): ``arith/policy`` (the
default ``--model arith``), ``arith/reviser``, the value heads and PRMs. Installed as package data
of ``ponder.artifacts``, so the default model is found in a wheel as in a checkout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
