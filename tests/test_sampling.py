"""Next-token sampling (``workers/sampling.py``): the two-level inverse CDF against the full
cumulative sum it replaces, the distribution a grid of uniforms draws, and the settings
(greedy, temperature, top-k, top-p) mixed in one batch."""

from __future__ import annotations

import pytest
import torch

from ponder.workers.sampling import CDF_BLOCK, inverse_cdf, sample_next
from ponder.workers.types import SamplingParams


def _full_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = weights.double().cumsum(-1)
    return torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True).squeeze(1)


@pytest.mark.parametrize("V", [CDF_BLOCK * 8, CDF_BLOCK * 8 + 77, 5000])  # whole blocks, a padded last block
def test_inverse_cdf_picks_the_full_cumsums_token(V: int) -> None:
    g = torch.Generator().manual_seed(0)
    weights = torch.rand((6, V), generator=g) ** 8  # a few heavy tokens, many light ones
    weights[:, ::3] = 0.0  # tokens that must never be picked
    weights[1, : V - 5] = 0.0  # all the mass in the last tokens (inside the padded block when V isn't whole)
    u = torch.rand((6, 1), generator=g)
    for trial in range(50):
        got = inverse_cdf(weights, u)
        want = _full_cdf(weights, u)
        # equal except where float rounding puts the target on a boundary: then a neighbour
        assert bool(((got - want).abs() <= 1).all()), (trial, got, want)
        assert bool((weights.gather(1, got[:, None]) > 0).all())
        u = torch.rand((6, 1), generator=g)


def test_inverse_cdf_never_returns_a_token_without_weight_at_the_extremes() -> None:
    V = CDF_BLOCK * 6
    weights = torch.zeros((4, V))
    weights[0, 3] = 1.0  # one token only
    weights[1, [0, V - 1]] = 1e-30  # tiny masses at both ends
    weights[2, CDF_BLOCK - 1] = 0.5  # the last token of a block, then the first of the next
    weights[2, CDF_BLOCK] = 0.5
    weights[3] = 1.0
    for u0 in (0.0, 1e-12, 0.5, 1.0 - 2**-24):
        u = torch.full((4, 1), u0)
        got = inverse_cdf(weights, u)
        assert bool((weights.gather(1, got[:, None]) > 0).all()), (u0, got)
    assert inverse_cdf(weights, torch.zeros((4, 1))).tolist()[:3] == [3, 0, CDF_BLOCK - 1]
    assert inverse_cdf(weights, torch.full((4, 1), 1.0 - 2**-24)).tolist()[:3] == [3, V - 1, CDF_BLOCK]


@pytest.mark.parametrize("V", [40, CDF_BLOCK * 12 + 3])  # arith-sized (one cumsum) and the two-level path
def test_a_grid_of_uniforms_draws_each_token_by_its_probability(V: int) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((1, V), generator=g) * 2
    temperature = 0.7
    probs = torch.softmax(logits.double() / temperature, -1)[0]
    n = 20000
    counts = torch.zeros(V)
    params = [SamplingParams(temperature=temperature)] * 100
    for start in range(0, n, 100):
        us = [(start + i + 0.5) / n for i in range(100)]
        toks = sample_next(logits.expand(100, V), params, us)
        counts += torch.bincount(toks, minlength=V).float()
    # a grid of n uniforms hits each token's CDF interval n * p times, give or take one
    assert float((counts - n * probs.float()).abs().max()) <= 1.01


def test_mixed_settings_in_one_batch_and_the_logits_are_left_alone() -> None:
    V = CDF_BLOCK * 5
    g = torch.Generator().manual_seed(2)
    logits = torch.randn((5, V), generator=g) * 3
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.0),  # greedy
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.2),
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=2.0, top_k=1),
    ]
    for u in (0.0, 0.3, 0.999):
        toks = sample_next(logits, params, [u] * 5)
        assert torch.equal(logits, before)
        order = logits.argsort(dim=-1, descending=True)
        assert toks[0] == order[0, 0]
        assert toks[1] in order[1, :3].tolist()
        p = torch.softmax(logits[2], -1)[order[2]]
        keep = int(((p.cumsum(0) - p) < 0.2).sum())  # the smallest prefix reaching 0.2
        assert toks[2] in order[2, :keep].tolist()
        assert toks[4] == order[4, 0]
    # the row's uniform decides: 0 draws the first token (every token has mass here)
    assert sample_next(logits[3:4], params[3:4], [0.0]).item() == 0


def test_bf16_logits_sample_like_their_fp32_values() -> None:
    V = CDF_BLOCK * 8
    logits = (torch.randn((4, V), generator=torch.Generator().manual_seed(3)) * 2).bfloat16()
    params = [SamplingParams(temperature=0.8)] * 4
    us = [0.1, 0.4, 0.7, 0.95]
    assert torch.equal(sample_next(logits, params, us), sample_next(logits.float(), params, us))
