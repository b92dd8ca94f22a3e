"""`ponder flops`: the small model's matched budget against a larger one, at equal total FLOPs
(pretraining 6·P·D_pre + inference 2·P·D_inf): X = M + 3(M − 1)/R."""

from __future__ import annotations

import json

import pytest

from ponder.cli.main import main as cli
from ponder.proto.errors import InvalidArgument
from ponder.evaluation.flops import matched_generations


@pytest.mark.parametrize("m,r", [(2.0, 1.0), (14.0, 0.16), (7.9, 22.0), (1.0, 0.5)])
def test_matched_budget_equalises_total_flops(m: float, r: float) -> None:
    p, d_pre = 1.0, 1.0
    d_inf = r * d_pre
    x = matched_generations(m, r)
    small = 6 * p * d_pre + 2 * p * d_inf * x
    large = 6 * m * p * d_pre + 2 * m * p * d_inf
    assert small == pytest.approx(large)
    assert x >= m  # never fewer generations than the size ratio


def test_same_size_means_one_generation_each() -> None:
    assert matched_generations(1.0, 0.01) == 1.0


def test_bad_ratio_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        matched_generations(2.0, 0.0)


def test_command_counts_the_built_in_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["flops", "--small", "arith", "--large-params", "2e7", "--ratios", "1,10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 3e6 < out["p_small"] < 4e6  # arith's 3.4M non-embedding parameters
    assert [row["R"] for row in out["rows"]] == [1.0, 10.0]
    assert out["rows"][0]["generations_total_flops"] > out["rows"][1]["generations_total_flops"]
    assert cli(["flops", "--small-params", "1e6", "--large-params", "2e6", "--ratios", "-1"]) == 2
    assert cli(["flops", "--large-params", "2e6"]) == 2
