"""SolveConfig: one validated request form, with the field named in every rejection."""

from __future__ import annotations

import math

import pytest

from ponder.proto import pb
from ponder.proto.config import Limits, SolveConfig
from ponder.proto.errors import InvalidArgument, from_status


def test_defaults_validate() -> None:
    cfg = SolveConfig("What is 2 + 2?").validate()
    assert cfg.strategy == "best_of_n" and cfg.generations == 4 and cfg.aggregation == "last"


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"question": ""}, "question"),
        ({"question": "\n\t "}, "question"),
        ({"strategy": "nope"}, "strategy"),
        ({"generations": 0}, "budget.generations"),
        ({"generations": 257}, "budget.generations"),
        ({"generations": True}, "budget.generations"),
        ({"max_tokens": -1}, "budget.max_tokens"),
        ({"max_flops": -1.0}, "budget.max_flops"),
        ({"temperature": -0.1}, "options.temperature"),
        ({"temperature": math.nan}, "options.temperature"),
        ({"top_p": 1.5}, "options.top_p"),
        ({"top_k": -1}, "options.top_k"),
        ({"beam_width": 0}, "options.beam_width"),
        ({"strategy": "beam", "beam_width": 8}, "options.beam_width"),
        ({"lookahead": -1}, "options.lookahead"),
        ({"max_steps": 65}, "options.max_steps"),
        ({"max_step_tokens": 0}, "options.max_step_tokens"),
        ({"seed": -1}, "options.seed"),
        ({"aggregation": "sum"}, "options.aggregation"),
        ({"selection": "random"}, "options.selection"),
        ({"sequential_ratio": -0.5}, "options.sequential_ratio"),
        ({"request_id": "x" * 201}, "request_id"),
        ({"priority": 5000}, "priority"),
        ({"timeout_s": 1e9}, "timeout_s"),
    ],
)
def test_each_bad_field_is_named(changes: dict, field: str) -> None:
    cfg = SolveConfig("What is 2 + 2?").replace(**changes)
    with pytest.raises(InvalidArgument) as info:
        cfg.validate()
    assert info.value.field == field
    assert info.value.code == "INVALID_ARGUMENT"
    assert str(info.value).startswith(field + ": ")


def test_limits_are_configurable() -> None:
    cfg = SolveConfig("q", generations=300)
    with pytest.raises(InvalidArgument):
        cfg.validate()
    cfg.validate(Limits(max_generations=512))
    with pytest.raises(InvalidArgument):
        SolveConfig("q" * 20).validate(Limits(max_question_chars=10))


def test_proto_round_trip_keeps_every_field() -> None:
    cfg = SolveConfig(
        "What is 3 * 4?", strategy="beam", generations=16, max_tokens=5000, max_flops=1e12,
        temperature=0.6, top_p=0.9, top_k=40, beam_width=4, lookahead=2, max_steps=10,
        max_step_tokens=128, seed=123, aggregation="min", selection="weighted", sequential_ratio=0.25,
        request_id="abc", priority=3, model="m", timeout_s=12.5,
    )
    back = SolveConfig.from_proto(pb.SolveRequest.FromString(cfg.to_proto().SerializeToString()))
    assert back == cfg


def test_unset_proto_fields_take_defaults() -> None:
    cfg = SolveConfig.from_proto(pb.SolveRequest(question="hi"))
    assert cfg == SolveConfig("hi")
    # an explicit zero budget is kept (and rejected by validate), not mistaken for "unset"
    req = pb.SolveRequest(question="hi")
    req.budget.generations = 0
    assert SolveConfig.from_proto(req).generations == 0


def test_status_codes_map_to_typed_errors() -> None:
    err = from_status("INVALID_ARGUMENT", "options.top_p: must be in (0, 1], got 0")
    assert isinstance(err, InvalidArgument) and err.field == "options.top_p"
    assert from_status("NOT_FOUND", "x").code == "NOT_FOUND"
    assert from_status("DATA_LOSS", "x").code == "DATA_LOSS"
