"""The paged KV cache: fork and copy-on-write, the prefix index, LRU eviction, and running out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponder.proto.errors import ResourceExhausted
from ponder.workers.engine import BlockPool, Engine, EngineConfig, KVCacheExhausted, Sequence
from ponder.workers.models import load_hf_model, resolve


@pytest.fixture(scope="module")
def hf_llama(tiny_llama_dir: Path):
    return load_hf_model(resolve(str(tiny_llama_dir)))


def make_engine(hf, blocks: int, block_size: int = 4) -> Engine:
    cfg = hf.config
    per_block = 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    return Engine(hf, EngineConfig(block_size=block_size, max_kv_bytes=blocks * per_block))


def seq_kv(engine: Engine, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a sequence sees, (L, n, H_kv, D) for its n tokens."""
    pool = engine.pool
    idx = torch.tensor(pool.slots(seq, 0, seq.length))
    L = pool.k.shape[0]
    k = pool.k.view(L, -1, *pool.k.shape[3:])[:, idx].clone()
    v = pool.v.view(L, -1, *pool.v.shape[3:])[:, idx].clone()
    return k, v


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_cpu_storage_reads_zeros_without_zeroing_and_commits_pages_lazily() -> None:
    """A CPU pool is anonymous mmap memory: every block reads 0 the first time it is handed out
    (no NaN under a masked slot), no block is zeroed by hand, and a 1 GiB cap costs nothing
    until blocks are written."""
    before = _rss()
    pool = BlockPool(n_layers=2, n_kv_heads=2, head_dim=8, block_size=16, max_bytes=2**30)
    zeroed: list[list[int]] = []
    pool._zero = lambda blocks: zeroed.append(list(blocks)) if blocks else None  # type: ignore[method-assign]
    s = Sequence()
    pool.prepare_append([s], [40])
    assert zeroed == [] and all(pool._clean)
    for b in s.blocks:
        assert pool.k[:, b].abs().sum() == 0 and pool.v[:, b].abs().sum() == 0
    assert _rss() - before < 2**26  # far below the 1 GiB cap: pages are committed on first write
    # written blocks keep what is written; a block freed and handed out again is not re-zeroed
    pool.k[:, s.blocks[0]] = 1.0
    pool.release(s)
    t = Sequence()
    pool.prepare_append([t], [1])
    assert zeroed == []


def test_pool_counts_and_freeing() -> None:
    pool = BlockPool(n_layers=1, n_kv_heads=1, head_dim=2, block_size=4, max_bytes=10 * 2 * 4 * 2 * 4)
    assert pool.num_blocks == 10 and pool.available == 10
    s = Sequence()
    pool.prepare_append([s], [9])  # 9 tokens: 3 blocks
    assert len(s.blocks) == 3 and pool.stats().referenced_blocks == 3
    c = pool.fork(s)
    assert c.blocks == s.blocks and all(pool.ref[b] == 2 for b in s.blocks)
    pool.release(s)
    assert all(pool.ref[b] == 1 for b in c.blocks) and s.released and not s.blocks
    pool.release(s)  # releasing twice is a no-op, never a double decref
    pool.release(c)
    assert pool.available == 10 and pool.stats().referenced_blocks == 0
    pool.check_consistent()
    with pytest.raises(ValueError):
        pool.fork(c)


def test_fork_shares_blocks_and_copy_on_write_protects_parent(hf_llama) -> None:
    eng = make_engine(hf_llama, blocks=64)
    parent = eng.prefill(list(range(3, 13))).seq  # 10 tokens, block 4: 2 full + a partial block
    before_k, before_v = seq_kv(eng, parent)
    used = eng.stats().referenced_blocks
    kids = [eng.fork(parent) for _ in range(3)]
    assert eng.stats().referenced_blocks == used  # forking copies nothing
    assert all(k.blocks == parent.blocks for k in kids)
    for step in range(6):  # the children write into the shared partial block and beyond
        eng.decode_step(kids, torch.tensor([20 + step, 40 + step, 60 + step]))
    after_k, after_v = seq_kv(eng, parent)
    assert torch.equal(before_k, after_k) and torch.equal(before_v, after_v)
    assert parent.length == 10
    for kid in kids:
        assert kid.blocks[:2] == parent.blocks[:2]  # full blocks stay shared
        assert kid.blocks[2] != parent.blocks[2]  # the partial block was copied on write
        assert kid.length == 16
    # The children's views differ from each other after their own tokens...
    k0, _ = seq_kv(eng, kids[0])
    k1, _ = seq_kv(eng, kids[1])
    assert torch.equal(k0[:, :10], k1[:, :10]) and not torch.equal(k0[:, 10:], k1[:, 10:])
    # ...and a child's view of the prompt equals the parent's.
    assert torch.equal(k0[:, :10], before_k)
    for s in [parent, *kids]:
        eng.release(s)
    assert eng.stats().referenced_blocks == 0
    eng.pool.check_consistent()


def test_fork_of_full_last_block_copies_nothing(hf_llama) -> None:
    eng = make_engine(hf_llama, blocks=32)
    parent = eng.prefill(list(range(3, 11))).seq  # 8 tokens = 2 full blocks
    kid = eng.fork(parent)
    eng.decode_step([kid], torch.tensor([5]))
    assert kid.blocks[:2] == parent.blocks and len(kid.blocks) == 3
    assert eng.stats().referenced_blocks == 3


def test_prefix_index_reuses_a_resubmitted_prompt_and_a_shared_prefix(hf_llama) -> None:
    eng = make_engine(hf_llama, blocks=64)
    prompt = list(range(3, 22))  # 19 tokens: 4 full blocks of 4
    first = eng.prefill(prompt)
    assert (first.computed_tokens, first.reused_tokens) == (19, 0)
    again = eng.prefill(prompt)
    assert (again.computed_tokens, again.reused_tokens) == (3, 16)
    assert again.seq.blocks[:4] == first.seq.blocks[:4]
    # Same logits for the next token whichever way the root was built.
    assert torch.allclose(eng.model.logits(again.seq.hidden[None]), eng.model.logits(first.seq.hidden[None]), atol=1e-5)
    # A different question after the same 10-token few-shot preamble reuses 2 blocks (8 tokens).
    other = eng.prefill(prompt[:10] + [200, 201, 202, 203, 204])
    assert other.reused_tokens == 8 and other.computed_tokens == 7
    # Released blocks stay findable: a prompt whose blocks are all cached runs nothing.
    exact = list(range(3, 19))  # 16 tokens: the first 4 blocks of ``prompt``
    for s in (first.seq, again.seq, other.seq):
        eng.release(s)
    assert eng.stats().referenced_blocks == 0 and eng.stats().cached_blocks >= 4
    full = eng.prefill(exact)
    assert (full.computed_tokens, full.reused_tokens) == (0, 16)
    ref = eng.forward_logits(exact)[-1]
    assert torch.allclose(eng.model.logits(full.seq.hidden[None])[0], ref, atol=1e-5)
    eng.pool.check_consistent()


def test_lru_eviction_of_unreferenced_cached_blocks(hf_llama) -> None:
    eng = make_engine(hf_llama, blocks=8)
    prompt_a, prompt_b = list(range(3, 11)), list(range(50, 58))  # 2 full blocks each
    a = eng.prefill(prompt_a)
    b = eng.prefill(prompt_b)
    eng.release(a.seq)  # a released first: least recently used
    eng.release(b.seq)
    assert eng.stats().cached_blocks == 4 and eng.stats().free_blocks == 4
    c = eng.prefill(list(range(100, 124)))  # 6 blocks: the 4 free ones, then evicts a's 2
    assert eng.stats().evictions == 2
    b2 = eng.prefill(prompt_b)  # b's blocks survived and come back into use
    assert (b2.reused_tokens, b2.computed_tokens) == (8, 0)
    assert eng.stats().referenced_blocks == 8
    eng.release(b2.seq)
    a2 = eng.prefill(prompt_a)  # a's were evicted: recomputed (evicting b's, now the oldest)
    assert (a2.reused_tokens, a2.computed_tokens) == (0, 8)
    assert eng.stats().evictions == 4
    eng.release(a2.seq)
    eng.release(c.seq)
    eng.pool.check_consistent()
    assert eng.pool.clear_cache() == 8 and eng.stats().free_blocks == 8  # a cold index
    assert eng.prefill(prompt_a).reused_tokens == 0
    eng.pool.check_consistent()


def test_running_out_is_a_typed_error_and_leaves_the_cache_usable(hf_llama) -> None:
    eng = make_engine(hf_llama, blocks=6)
    root = eng.prefill(list(range(3, 9))).seq  # 6 tokens: a full block and a partial one
    root_kv = seq_kv(eng, root)
    kids = [eng.fork(root) for _ in range(4)]
    eng.decode_step(kids, torch.tensor([7, 8, 9, 10]))  # 4 copy-on-writes take the last 4 blocks
    eng.decode_step(kids, torch.tensor([7, 8, 9, 10]))  # fits in the copied blocks
    assert eng.stats().free_blocks == 0 and all(k.length == 8 for k in kids)
    tables, refs = [list(k.blocks) for k in kids], list(eng.pool.ref)
    kv_before = [seq_kv(eng, k) for k in kids]
    with pytest.raises(KVCacheExhausted) as info:  # every kid needs a new block: none left
        eng.decode_step(kids, torch.tensor([7, 8, 9, 10]))
    err = info.value
    assert isinstance(err, ResourceExhausted) and err.code == "RESOURCE_EXHAUSTED"
    assert "KV cache exhausted" in err.message and err.needed == 4
    # Nothing changed: tables, lengths, reference counts, cached keys/values.
    eng.pool.check_consistent()
    assert [k.blocks for k in kids] == tables and eng.pool.ref == refs
    assert all(k.length == 8 for k in kids)
    for k, (kb, vb) in zip(kids, kv_before):
        kk, vv = seq_kv(eng, k)
        assert torch.equal(kk, kb) and torch.equal(vv, vb)
    # Releasing makes room again and the cache still computes the right thing.
    for k in kids[1:]:
        eng.release(k)
    hidden = eng.decode_step(kids[:1], torch.tensor([11]))  # (1, D)
    assert all(torch.equal(x, y) for x, y in zip(seq_kv(eng, root), root_kv))
    with torch.no_grad():
        want = hf_llama(torch.tensor([list(range(3, 9)) + [7, 7, 11]])).logits[0, -1]
    assert torch.allclose(eng.model.logits(hidden)[0], want, atol=1e-4)
    eng.release(kids[0])
    eng.release(root)
    eng.pool.check_consistent()


def test_too_small_a_cap_is_invalid(hf_llama) -> None:
    from ponder.proto.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        Engine(hf_llama, EngineConfig(block_size=4, max_kv_bytes=16))
    with pytest.raises(InvalidArgument):
        EngineConfig(block_size=0)
    with pytest.raises(InvalidArgument):
        EngineConfig(dtype="int8")
