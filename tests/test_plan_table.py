"""auto's plan table (workers/search/plan.py): validation with field names, files, bins, lookup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fakes import ScriptedVerifier
from ponder.proto.errors import InvalidArgument
from ponder.workers.search.controller import ControllerConfig
from ponder.workers.search.plan import DEFAULT_PLAN, PlanTable, StrategyPlan

EDGES = [0.2, 0.4, 0.6, 0.8]


def good() -> dict[str, Any]:
    return {
        "model": "tiny",
        "fingerprint": "abc123",
        "verifier": "prm",
        "pilot": 4,
        "edges": list(EDGES),
        "plans": {
            "1": {"4": {"strategy": "best_of_n", "selection": "majority"}, "16": {"strategy": "beam", "beam_width": 4}},
            "5": {"4": {"strategy": "lookahead", "lookahead": 2, "beam_width": 2}},
        },
        "controller": {"wave": 2, "stop_share": 0.8},
        "fit": {"questions": 100},
    }


def invalid(data: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        PlanTable.from_dict(data)
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


def test_a_good_table_loads() -> None:
    t = PlanTable.from_dict(good(), source="x.json")
    assert t.pilot == 4 and t.edges == tuple(EDGES) and t.source == "x.json"
    assert t.plans[1][16] == StrategyPlan("beam", beam_width=4)
    assert t.plans[5][4] == StrategyPlan("lookahead", lookahead=2, beam_width=2)
    assert t.controller == ControllerConfig(wave=2, stop_share=0.8)
    assert "pilot 4" in t.summary() and "N=16 beam beam_width=4" in t.summary()


@pytest.mark.parametrize(
    "mutate,field_",
    [
        (lambda d: d.update(bogus=1), "plan.bogus"),
        (lambda d: d["plans"]["1"]["4"].update(width=4), "plan.plans.1.4.width"),
        (lambda d: d["plans"]["1"].update({"8": {"strategy": "magic"}}), "plan.plans.1.8.strategy"),
        (lambda d: d["plans"]["1"].update({"8": {"strategy": "auto"}}), "plan.plans.1.8.strategy"),  # no recursion
        (lambda d: d["plans"]["1"].update({"8": {"strategy": "beam", "beam_width": 0}}), "plan.plans.1.8.beam_width"),
        (lambda d: d["plans"]["1"].update({"8": {"selection": "vote"}}), "plan.plans.1.8.selection"),
        (lambda d: d["plans"]["1"].update({"8": {"aggregation": "max"}}), "plan.plans.1.8.aggregation"),
        (lambda d: d["plans"]["1"].update({"8": {"sequential_ratio": 2}}), "plan.plans.1.8.sequential_ratio"),
        (lambda d: d["plans"]["1"].update({"8": "beam"}), "plan.plans.1.8"),
        (lambda d: d["plans"]["1"].update({"0": {}}), "plan.plans.1.0"),  # budgets are positive
        (lambda d: d["plans"].update({"6": {"4": {}}}), "plan.plans.6"),  # bins 0..5
        (lambda d: d["plans"].update({"2": {}}), "plan.plans.2"),  # an empty row
        (lambda d: d.update(plans=[]), "plan.plans"),
        (lambda d: d["controller"].update(stop_share=1.5), "plan.controller.stop_share"),
        (lambda d: d["controller"].update(window=0), "plan.controller.window"),
        (lambda d: d["controller"].update(patience=3), "plan.controller.patience"),
        (lambda d: d.update(controller=[]), "plan.controller"),
        (lambda d: d.update(edges=[0.8, 0.6, 0.4, 0.2]), "plan.edges"),  # not ascending
        (lambda d: d.update(edges=[0.2, 0.6, 0.4, 0.8]), "plan.edges"),
        (lambda d: d.update(edges=[0.2, 0.4, 0.6]), "plan.edges"),  # not 4 of them
        (lambda d: d.update(edges=["low", 0.4, 0.6, 0.8]), "plan.edges"),
        (lambda d: d.update(edges=0.5), "plan.edges"),
        (lambda d: d.update(pilot=0), "plan.pilot"),
        (lambda d: d.update(pilot="4"), "plan.pilot"),
    ],
)
def test_bad_tables_name_the_field(mutate: Any, field_: str) -> None:
    data = good()
    mutate(data)
    err = invalid(data)
    assert err.field == field_, str(err)


@pytest.mark.parametrize("edges", [[float("nan"), 0.4, 0.6, 0.8], [0.2, float("nan"), 0.6, 0.8]])
def test_nan_edges_are_refused(tmp_path: Path, edges: list[float]) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"edges": edges}))  # written as NaN, read back as nan
    with pytest.raises(InvalidArgument) as info:
        PlanTable.load(path)
    assert info.value.field == "plan.edges"


def test_not_an_object() -> None:
    assert invalid([1, 2]).field == "plan"


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = PlanTable.from_dict(good(), source="fitted")
    path = tmp_path / "plan.json"
    t.save(path)
    back = PlanTable.load(path, fingerprint="abc123", model="tiny")
    assert back.as_dict() == t.as_dict()
    assert back.fit == {"questions": 100}
    assert back.source.startswith("plan.json")  # the file's name, never its path (clients see it)
    assert str(tmp_path) not in back.source
    assert back == t  # the source is not part of a table's value
    # and the file is plain JSON with string keys
    assert json.loads(path.read_text())["plans"]["1"]["16"] == {"strategy": "beam", "beam_width": 4}


def test_default_plan_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    DEFAULT_PLAN.save(path)
    back = PlanTable.load(path, fingerprint="whatever")  # no fingerprint: any model may use it
    assert back == DEFAULT_PLAN


def test_load_refuses_another_models_table(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    PlanTable.from_dict(good()).save(path)
    # the same model name, other weights
    with pytest.raises(InvalidArgument) as info:
        PlanTable.load(path, fingerprint="def456", model="tiny")
    assert info.value.field == "plan"
    assert "abc123" in info.value.message and "def456" in info.value.message
    # another model, even when the table carries no fingerprint
    data = good() | {"fingerprint": ""}
    PlanTable.from_dict(data).save(path)
    with pytest.raises(InvalidArgument) as info:
        PlanTable.load(path, fingerprint="def456", model="other")
    assert info.value.field == "plan" and "'tiny'" in info.value.message and "'other'" in info.value.message
    PlanTable.load(path)  # without a model to check against, it loads


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_load_reports_missing_or_broken_files(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgument) as info:
        PlanTable.load(path)
    assert info.value.field == "plan"


@pytest.mark.parametrize(
    "mean,expected",
    [(0.99, 1), (0.81, 1), (0.8, 2), (0.7, 2), (0.5, 3), (0.3, 4), (0.2, 5), (0.01, 5), (0.0, 5)],
)
def test_bin_of(mean: float, expected: int) -> None:
    t = PlanTable(edges=tuple(EDGES))
    assert t.bin_of(mean) == expected
    assert PlanTable().bin_of(mean) == 0  # no edges: unknown


def test_bins_are_monotone_in_the_score() -> None:
    t = PlanTable(edges=(0.1, 0.3, 0.5, 0.9))
    bins = [t.bin_of(i / 100) for i in range(101)]
    assert bins == sorted(bins, reverse=True) and set(bins) == {1, 2, 3, 4, 5}


def test_lookup_uses_the_largest_budget_at_most_n() -> None:
    a, b, c = StrategyPlan("best_of_n"), StrategyPlan("beam", beam_width=4), StrategyPlan("dvts", beam_width=4)
    any_bin = StrategyPlan("revision", sequential_ratio=0.5)
    t = PlanTable(edges=tuple(EDGES), plans={2: {4: a, 16: b, 64: c}, 0: {1: any_bin}})
    assert t.lookup(2, 4) is a
    assert t.lookup(2, 15) is a
    assert t.lookup(2, 16) is b
    assert t.lookup(2, 63) is b
    assert t.lookup(2, 1000) is c
    assert t.lookup(2, 2) is a  # below every listed budget: the smallest
    assert t.lookup(3, 16) is any_bin  # a bin without a row: bin 0's
    assert PlanTable().lookup(1, 8) == StrategyPlan("best_of_n")  # no plans at all


def test_strategy_plan_overrides_and_describe() -> None:
    p = StrategyPlan("lookahead", beam_width=2, lookahead=3)
    assert p.overrides() == {"strategy": "lookahead", "beam_width": 2, "lookahead": 3}
    assert p.describe() == "lookahead beam_width=2 lookahead=3"
    assert StrategyPlan().describe() == "best_of_n"


def test_build_plan_specs_and_verifier_check(tmp_path: Path) -> None:
    from ponder.workers.runtime import build_plan

    assert build_plan("default", "") is DEFAULT_PLAN
    assert build_plan("none", "") is DEFAULT_PLAN
    assert build_plan("auto", "") is DEFAULT_PLAN  # no model: no plan.json to find
    data = good()
    data["fingerprint"] = ""  # a path spec without a model: nothing to check the fingerprint against
    path = tmp_path / "plan.json"
    PlanTable.from_dict(data).save(path)
    table = build_plan(str(path), "", ScriptedVerifier(name="prm"))
    assert table.plans[1][16] == StrategyPlan("beam", beam_width=4) and table.source.startswith("plan.json")
    with pytest.raises(InvalidArgument) as info:
        build_plan(str(path), "", ScriptedVerifier(name="another-prm"))
    assert info.value.field == "plan" and "another-prm" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        build_plan(str(path), "", None)  # fitted with a verifier, run without one
    assert info.value.field == "plan"
    with pytest.raises(InvalidArgument) as info:
        build_plan(str(tmp_path / "missing.json"), "")
    assert info.value.field == "plan"


def test_the_models_own_table_applies_only_to_its_verifier() -> None:
    """`--plan auto` with another verifier than the one arith's table was fitted for: the
    default plan (a path to the same table would be refused)."""
    from ponder.workers.models import BUILTIN
    from ponder.workers.runtime import build_plan

    own = build_plan("auto", "arith", ScriptedVerifier(name="confidence"))
    assert own.model == "arith" and own.plans
    assert build_plan("auto", "arith", ScriptedVerifier(name="scripted-prm")) is DEFAULT_PLAN
    with pytest.raises(InvalidArgument) as info:
        build_plan(str(BUILTIN["arith"] / "plan.json"), "arith", ScriptedVerifier(name="scripted-prm"))
    assert info.value.field == "plan"


def test_each_verifier_finds_its_own_table_beside_the_model(tmp_path: Path) -> None:
    """`--plan auto` looks for plan-<verifier>.json first: a table fitted for another verifier
    (ponder train plan --verifier likelihood:...) is used by workers that run that verifier,
    and the model's plan.json stays its own verifier's."""
    import shutil

    from ponder.workers.models import BUILTIN, resolve
    from ponder.workers.prm.confidence import model_fingerprint
    from ponder.workers.runtime import build_plan
    from ponder.workers.search.plan import plan_file

    assert plan_file() == "plan.json"
    assert plan_file("likelihood:arith-large") == "plan-likelihood-arith-large.json"
    assert plan_file("likelihood:/models/judge:uncalibrated") == "plan-likelihood-models-judge-uncalibrated.json"
    model = tmp_path / "arith"  # the table names its model, and a path is named by its folder
    shutil.copytree(BUILTIN["arith"], model, ignore=shutil.ignore_patterns("plan-*.json"))
    data = good() | {"model": resolve(str(model)).name, "fingerprint": model_fingerprint(resolve(str(model))),
                     "verifier": "likelihood:judge"}
    PlanTable.from_dict(data).save(model / plan_file("likelihood:judge"))
    theirs = build_plan("auto", str(model), ScriptedVerifier(name="likelihood:judge"))
    assert theirs.verifier == "likelihood:judge" and theirs.plans[1][16] == StrategyPlan("beam", beam_width=4)
    own = build_plan("auto", str(model), ScriptedVerifier(name="confidence"))
    assert own.verifier == "confidence" and own.edges != EDGES
    assert build_plan("auto", str(model), ScriptedVerifier(name="scripted-prm")) is DEFAULT_PLAN


def test_a_refit_never_overwrites_another_verifiers_table(tmp_path: Path) -> None:
    """ponder train plan's default output: the model's plan.json when that was fitted for the
    same verifier, else plan-<verifier>.json beside it; a table without a verifier is plan.json."""
    from ponder.training.plan import default_out

    assert default_out(tmp_path, "") == tmp_path / "plan.json"
    assert default_out(tmp_path, "confidence") == tmp_path / "plan-confidence.json"
    (tmp_path / "plan.json").write_text(json.dumps(good() | {"verifier": "confidence"}))
    assert default_out(tmp_path, "confidence") == tmp_path / "plan.json"
    assert default_out(tmp_path, "likelihood:arith-large") == tmp_path / "plan-likelihood-arith-large.json"
    assert default_out(tmp_path, "") == tmp_path / "plan.json"  # the only place a table without a verifier is found
