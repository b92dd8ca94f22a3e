"""EnginePolicy: step-wise decoding, seeds, batching, hidden states, release, and search runs.

The tiny byte-level model's step delimiter is set to "e" (ponder.json) so that, with 259 near
equally likely tokens, a fair share of steps end on the delimiter within a few dozen tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.workers.engine import EngineConfig, EnginePolicy, KVCacheExhausted
from ponder.workers.hf_policy import HFPolicy
from ponder.workers.loop import SearchLoop
from ponder.workers.models import load_hf_model, resolve
from ponder.workers.types import Node, Prompt, SamplingParams, StepOutput


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-e"), "llama", ponder_json={"step_delimiter": "e"})


@pytest.fixture(scope="module")
def hf_model(model_dir: Path):
    return load_hf_model(resolve(str(model_dir)))


@pytest.fixture()
def policy(model_dir: Path, hf_model) -> EnginePolicy:
    return EnginePolicy(resolve(str(model_dir)), model=hf_model, config=EngineConfig(block_size=4, max_kv_bytes=8 << 20))


@pytest.fixture(scope="module")
def hf_policy(model_dir: Path, hf_model) -> HFPolicy:
    return HFPolicy(resolve(str(model_dir)), model=hf_model)


def roots(policy, questions: list[str]) -> list[Node]:
    outs = policy.prefill([Prompt(q) for q in questions])
    return [Node(id=-(i + 1), parent=None, depth=0, token_ids=o.token_ids, handle=o.handle) for i, o in enumerate(outs)]


def children(parents: list[Node], outs: list[StepOutput], first_id: int = 1000) -> list[Node]:
    return [
        Node(id=first_id + i, parent=p, depth=p.depth + 1, text=o.text, token_ids=o.token_ids, handle=o.handle)
        for i, (p, o) in enumerate(zip(parents, outs))
    ]


MIXED = [
    SamplingParams(temperature=1.0, max_step_tokens=24),
    SamplingParams(temperature=0.0, max_step_tokens=24),
    SamplingParams(temperature=0.7, top_p=0.9, max_step_tokens=24),
    SamplingParams(temperature=1.2, top_k=20, max_step_tokens=24),
]


def test_same_steps_as_the_transformers_policy(policy: EnginePolicy, hf_policy: HFPolicy) -> None:
    """Same seeds, same tokens, stop reasons and hidden states as HFPolicy, over two steps."""
    for p in (policy, hf_policy):
        p._roots = roots(p, ["What is 2 + 3?", "Name a prime."])  # type: ignore[attr-defined]
    n = 16
    params = [MIXED[i % 4] for i in range(n)]
    seeds = [1000 + i for i in range(n)]
    results = {}
    for name, p in (("engine", policy), ("hf", hf_policy)):
        parents = [p._roots[i % 2] for i in range(n)]  # type: ignore[attr-defined]
        first = p.expand(parents, params, seeds)
        kids = children(parents, first)
        second = p.expand(kids, params, [s + 1 for s in seeds])
        results[name] = (first, second)
    reasons = set()
    for ours, theirs in zip(results["engine"], results["hf"]):
        for a, b in zip(ours, theirs):
            assert a.token_ids == b.token_ids and a.text == b.text
            assert (a.stop_reason, a.finished) == (b.stop_reason, b.finished)
            assert a.hidden is not None and b.hidden is not None
            assert torch.allclose(a.hidden, b.hidden, atol=1e-4)
            assert a.computed_tokens == len(a.token_ids)  # no re-encoding of the prefix
            reasons.add(a.stop_reason)
    assert {"delimiter", "max_tokens"} <= reasons  # both stop rules were exercised


def test_handle_covers_the_step_and_hidden_is_at_its_last_token(policy: EnginePolicy, hf_model) -> None:
    (root,) = roots(policy, ["Add 4 and 5."])
    outs = policy.expand([root] * 3, [SamplingParams(temperature=1.0, max_step_tokens=12)] * 3, [1, 2, 3])
    for out in outs:
        full = root.token_ids + out.token_ids
        assert out.handle.tokens == full and out.handle.length == len(full)
        with torch.no_grad():
            want = hf_model.model(torch.tensor([full])).last_hidden_state[0, -1]
        assert torch.allclose(out.hidden, want, atol=1e-4)
        assert out.text == policy.tokenizer.decode([t for t in out.token_ids if t not in policy.eos])


def test_same_seed_same_text_and_batch_mates_do_not_matter(policy: EnginePolicy) -> None:
    rs = roots(policy, ["What is 7 times 6?", "Is 91 prime?"])
    params = SamplingParams(temperature=1.0, top_p=0.95, max_step_tokens=20)
    parents = [rs[i % 2] for i in range(12)]
    seeds = [77 + 13 * i for i in range(12)]
    batched = policy.expand(parents, [params] * 12, seeds)
    again = policy.expand(parents, [params] * 12, seeds)
    assert [o.token_ids for o in batched] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in batched}) > 6  # different seeds, different samples
    for i in (0, 5, 11):  # alone, the row gives the same text
        (alone,) = policy.expand([parents[i]], [params], [seeds[i]])
        assert alone.token_ids == batched[i].token_ids and alone.text == batched[i].text
    # Continuous batching: 3 rows at a time, waiting rows join as others finish.
    small = EnginePolicy(policy.files, model=policy.hf_model, tokenizer=policy.tokenizer,
                         config=EngineConfig(block_size=4, max_kv_bytes=8 << 20, max_batch_rows=3))
    rs2 = roots(small, ["What is 7 times 6?", "Is 91 prime?"])
    trickled = small.expand([rs2[i % 2] for i in range(12)], [params] * 12, seeds)
    assert [o.token_ids for o in trickled] == [o.token_ids for o in batched]


def test_prefix_reuse_is_reported_and_release_returns_every_block(policy: EnginePolicy) -> None:
    q = "A question long enough to fill a few blocks of four tokens."
    first, dup = policy.prefill([Prompt(q), Prompt(q)])  # the second reuses the first's blocks
    assert first.reused_tokens == 0 and first.computed_tokens == len(first.token_ids)
    n = len(dup.token_ids)
    assert dup.reused_tokens == (n // 4) * 4 and dup.computed_tokens == n - dup.reused_tokens
    nodes = [Node(id=i, parent=None, depth=0, token_ids=o.token_ids, handle=o.handle) for i, o in enumerate((first, dup))]
    kids = children(nodes * 3, policy.expand(nodes * 3, [SamplingParams(max_step_tokens=9)] * 6, list(range(6))))
    assert policy.cache_stats().referenced_blocks > 0
    policy.release(nodes + kids)
    assert policy.cache_stats().referenced_blocks == 0
    policy.engine.pool.check_consistent()
    with pytest.raises(ValueError):  # a released node cannot be expanded
        policy.expand([nodes[0]], [SamplingParams()], [0])


def test_running_out_of_kv_memory_raises_and_releases_the_call(model_dir: Path, hf_model) -> None:
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # layers, block 4, kv heads 2, head dim 16, fp32
    policy = EnginePolicy(resolve(str(model_dir)), model=hf_model, config=EngineConfig(block_size=4, max_kv_bytes=30 * per_block))
    (root,) = roots(policy, ["Hi?"])
    held = policy.cache_stats().referenced_blocks
    with pytest.raises(KVCacheExhausted):
        policy.expand([root] * 16, [SamplingParams(temperature=1.0, max_step_tokens=64)] * 16, list(range(16)))
    assert policy.cache_stats().referenced_blocks == held  # the failed call's rows were released
    policy.engine.pool.check_consistent()
    (out,) = policy.expand([root], [SamplingParams(max_step_tokens=8)], [3])  # still serves
    assert out.token_ids
    # Through the search loop the job fails with RESOURCE_EXHAUSTED; the loop survives.
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, sink=lambda _j, evs: events.extend(evs))
    cfg = SolveConfig(question="Hi?", generations=64, max_steps=2, max_step_tokens=64, seed=1, temperature=1.0)
    loop.submit("big", cfg.validate())
    loop.run_until_idle()
    errors = [e.error for e in events if e.HasField("error")]
    assert errors and errors[0].code == "RESOURCE_EXHAUSTED"


def solve(policy, strategy: str = "best_of_n") -> list[pb.SolveEvent]:
    events: list[pb.SolveEvent] = []
    loop = SearchLoop(policy, sink=lambda _j, evs: events.extend(evs))
    config = SolveConfig(question="What is 2 + 3?", strategy=strategy, generations=4, max_steps=3, max_step_tokens=8, seed=7)
    loop.submit("job", config.validate())
    loop.run_until_idle()
    return events


def test_best_of_n_through_the_search_loop(policy: EnginePolicy, hf_policy: HFPolicy) -> None:
    events = solve(policy)
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final", kinds
    fin = events[-1].final
    u = fin.usage
    assert u.generations == 4 and u.decode_tokens > 0
    # The prompt was prefilled once and shared by the 4 samples: later steps of one sample
    # extend its own cache, so nothing but the prompt (once) and the new tokens was computed.
    steps = [e.step for e in events if e.HasField("step")]
    assert u.steps == len(steps) and u.prompt_tokens == len(policy.encode(policy.format_prompt(Prompt("What is 2 + 3?"))))
    assert u.tokens_saved > 0 and u.flops < u.flops_unshared
    assert policy.cache_stats().referenced_blocks == 0  # the loop released every node
    # The same search through the transformers backend gives the same transcript.
    theirs = solve(hf_policy)
    assert [(s.node_id, s.text) for s in steps] == [(e.step.node_id, e.step.text) for e in theirs if e.HasField("step")]
    assert fin.answer == theirs[-1].final.answer and fin.solution == theirs[-1].final.solution


def test_load_and_unsupported_architectures(model_dir: Path, tmp_path: Path) -> None:
    loaded = EnginePolicy.load(str(model_dir), block_size=8, max_kv_bytes=1 << 20, dtype="float32")
    assert loaded.config.block_size == 8 and loaded.n_params > 0 and loaded.step_delimiter == "e"
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiny_models import byte_tokenizer

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=259, n_embd=32, n_layer=1, n_head=2))
    gpt2.save_pretrained(str(tmp_path))
    byte_tokenizer().save_pretrained(str(tmp_path))
    with pytest.raises(InvalidArgument, match="transformers backend"):
        EnginePolicy.load(str(tmp_path))
