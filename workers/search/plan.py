"""auto's plan table: predicted difficulty bins, and for each bin and budget the strategy to run.

The paper's compute-optimal strategy (Snell et al. §3): estimate a question's difficulty, then
spend its budget the way that worked best on questions of that difficulty. Here:

- ``pilot`` samples (best-of-N, scored by the verifier) are drawn first; they stay candidates.
- Their mean final score is the predicted difficulty; ``edges`` (4 ascending quantiles of that
  mean on the fitting questions) cut it into 5 bins, bin 1 the easiest (highest scores).
- ``plans[bin][budget]`` names the strategy and its settings for the rest of the budget; the
  entry for the largest listed budget <= N is used (the smallest listed one below that).
- ``controller`` holds the live controller's thresholds (see controller.py).

A table is fitted by ``ponder train plan`` and saved beside the model with the model's
fingerprint and its verifier: over ``plan.json`` when that was fitted for the same verifier,
else as ``plan-<verifier>.json`` (:func:`plan_file`), so each verifier finds its own. A model
without one gets :data:`DEFAULT_PLAN`: a pilot of 4, no bins, and
verifier-weighted best-of-N (majority without a verifier) under the live controller.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.proto.config import AGGREGATIONS, SELECTIONS
from ponder.proto.errors import InvalidArgument
from ponder.workers.search.controller import ControllerConfig

PLAN_FILE = "plan.json"


def plan_file(verifier: str = "") -> str:
    """The file name of the table fitted for ``verifier`` beside the model: ``plan-<verifier>.json``
    with ``:`` and ``/`` written as ``-`` (``likelihood:arith-large`` -> ``plan-likelihood-arith-large.json``),
    ``plan.json`` for none."""
    if not verifier:
        return PLAN_FILE
    return "plan-" + re.sub(r"[^A-Za-z0-9._-]+", "-", verifier).strip("-") + ".json"
N_BINS = 5
PLAN_STRATEGIES = ("best_of_n", "beam", "lookahead", "dvts", "revision", "hybrid")


@dataclass(frozen=True)
class StrategyPlan:
    """One cell of the table: a strategy and the settings that override the request's."""

    strategy: str = "best_of_n"
    selection: str | None = None
    beam_width: int | None = None
    lookahead: int | None = None
    sequential_ratio: float | None = None
    aggregation: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StrategyPlan:
        if not isinstance(data, dict):
            raise InvalidArgument(where, f"must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"{where}.{unknown[0]}", f"is not a plan setting ({', '.join(sorted(known))})")
        plan = cls(**data)
        if plan.strategy not in PLAN_STRATEGIES:
            raise InvalidArgument(f"{where}.strategy", f"unknown strategy {plan.strategy!r}; expected one of {', '.join(PLAN_STRATEGIES)}")
        if plan.selection is not None and plan.selection not in SELECTIONS:
            raise InvalidArgument(f"{where}.selection", f"unknown selection {plan.selection!r}")
        if plan.aggregation is not None and plan.aggregation not in AGGREGATIONS:
            raise InvalidArgument(f"{where}.aggregation", f"unknown aggregation {plan.aggregation!r}")
        for name, lo, hi in (("beam_width", 1, 64), ("lookahead", 0, 8)):
            v = getattr(plan, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
                raise InvalidArgument(f"{where}.{name}", f"must be an integer in [{lo}, {hi}], got {v!r}")
        r = plan.sequential_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0):
            raise InvalidArgument(f"{where}.sequential_ratio", f"must be in [0, 1], got {r!r}")
        return plan

    def overrides(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.overrides().items() if k != "strategy")
        return f"{self.strategy} {extra}".strip()


@dataclass(frozen=True)
class PlanTable:
    model: str = ""
    fingerprint: str = ""  # "" : not tied to a model (the default plan)
    verifier: str = ""
    pilot: int = 4
    edges: tuple[float, ...] = ()  # 4 ascending thresholds on the pilot's mean score, or none
    plans: dict[int, dict[int, StrategyPlan]] = field(default_factory=dict)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    fit: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="default plan", compare=False)  # where it was loaded from

    def __post_init__(self) -> None:
        if isinstance(self.pilot, bool) or not isinstance(self.pilot, int) or not 1 <= self.pilot <= 256:
            raise InvalidArgument("plan.pilot", f"must be an integer in [1, 256], got {self.pilot!r}")
        if self.edges:
            if len(self.edges) != N_BINS - 1 or any(
                isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) for e in self.edges
            ):
                raise InvalidArgument("plan.edges", f"must be {N_BINS - 1} numbers, got {list(self.edges)!r}")
            if list(self.edges) != sorted(self.edges):
                raise InvalidArgument("plan.edges", f"must be ascending, got {list(self.edges)!r}")
        elif any(b != 0 for b in self.plans):
            raise InvalidArgument("plan.edges", "plans per difficulty bin need the 4 bin edges")

    def bin_of(self, mean_score: float) -> int:
        """Predicted difficulty bin, 1 (easiest: highest mean score) .. 5; 0 without edges."""
        if not self.edges:
            return 0
        return N_BINS - sum(1 for e in self.edges if mean_score > e)

    def lookup(self, difficulty_bin: int, budget: int) -> StrategyPlan:
        row = self.plans.get(difficulty_bin) or self.plans.get(0)
        if not row:
            return StrategyPlan("best_of_n")
        fitting = [b for b in row if b <= budget]
        return row[max(fitting) if fitting else min(row)]

    def summary(self) -> str:
        """One line for ServerInfo: where the table came from, its bins and plans."""
        if not self.plans:
            return f"{self.source}: pilot {self.pilot}, weighted best-of-N under the live controller"
        cells = []
        for b in sorted(self.plans):
            row = self.plans[b]
            cells.append(f"bin {b}: " + ", ".join(f"N={n} {row[n].describe()}" for n in sorted(row)))
        edges = ", ".join(f"{e:.3f}" for e in self.edges)
        return f"{self.source}: pilot {self.pilot}, edges [{edges}]; " + "; ".join(cells)

    # -- files ------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "verifier": self.verifier,
            "pilot": self.pilot,
            "edges": list(self.edges),
            "plans": {str(b): {str(n): p.overrides() for n, p in sorted(row.items())} for b, row in sorted(self.plans.items())},
            "controller": self.controller.as_dict(),
            "fit": self.fit,
        }

    def save(self, path: Path) -> None:
        """Strict JSON: a NaN figure in the fit record is written as null."""
        path.write_text(json.dumps(_finite(self.as_dict()), indent=1, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> PlanTable:
        if not isinstance(data, dict):
            raise InvalidArgument("plan", f"{source or 'the plan table'} must be a JSON object")
        known = {"model", "fingerprint", "verifier", "pilot", "edges", "plans", "controller", "fit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"plan.{unknown[0]}", f"is not a plan table field ({', '.join(sorted(known))})")
        plans: dict[int, dict[int, StrategyPlan]] = {}
        raw = data.get("plans", {})
        if not isinstance(raw, dict):
            raise InvalidArgument("plan.plans", "must be an object {bin: {budget: plan}}")
        for b, row in raw.items():
            where = f"plan.plans.{b}"
            if not str(b).isdigit() or not 0 <= int(b) <= N_BINS:
                raise InvalidArgument(where, f"bins are 0 (any) or 1..{N_BINS}, got {b!r}")
            if not isinstance(row, dict) or not row:
                raise InvalidArgument(where, "must be a non-empty object {budget: plan}")
            cells: dict[int, StrategyPlan] = {}
            for n, cell in row.items():
                if not str(n).isdigit() or int(n) < 1:
                    raise InvalidArgument(f"{where}.{n}", f"budgets are positive integers, got {n!r}")
                cells[int(n)] = StrategyPlan.from_dict(cell, f"{where}.{n}")
            plans[int(b)] = cells
        edges = data.get("edges", [])
        if not isinstance(edges, list):
            raise InvalidArgument("plan.edges", f"must be a list, got {edges!r}")
        return cls(
            model=str(data.get("model", "")),
            fingerprint=str(data.get("fingerprint", "")),
            verifier=str(data.get("verifier", "")),
            pilot=data.get("pilot", 4),
            edges=tuple(edges),
            plans=plans,
            controller=ControllerConfig.from_dict(data.get("controller", {})),
            fit=data.get("fit", {}) if isinstance(data.get("fit", {}), dict) else {},
            source=source or "plan table",
        )

    @classmethod
    def load(cls, path: Path, fingerprint: str | None = None, model: str = "") -> PlanTable:
        """Read and validate a table; with ``fingerprint`` (and ``model``, the model's name),
        refuse a table fitted on another model."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidArgument("plan", f"{path} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgument("plan", f"{path} is not a readable JSON plan table ({exc})") from None
        # the file's name, not its path: the source is shown to clients (Started, ServerInfo)
        table = cls.from_dict(data, source=Path(path).name)
        if table.model:
            table = dataclasses.replace(table, source=f"{table.source} of {table.model}")
        if model and table.model and table.model != model:
            raise InvalidArgument("plan", f"{path} was fitted on model {table.model!r}, not on {model!r}; refit it with `ponder train plan`")
        if fingerprint is not None and table.fingerprint and table.fingerprint != fingerprint:
            raise InvalidArgument(
                "plan",
                f"{path} was fitted on model {table.model!r} (fingerprint {table.fingerprint}), not on "
                f"{model or 'this model'!r} (fingerprint {fingerprint}); refit it with `ponder train plan`",
            )
        return table


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


DEFAULT_PLAN = PlanTable()
