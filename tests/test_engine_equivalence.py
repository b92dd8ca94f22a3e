"""Our forward matches transformers' on the same input (fp32, max abs difference <= 1e-4):
prefill, decode steps over the paged cache, batched rows with and without shared prefixes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ponder.workers.engine import Engine, EngineConfig
from ponder.workers.models import load_hf_model, resolve

TOL = 1e-4


def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()  # (T, V)


def randomise_biases(model: Any, seed: int = 1) -> None:
    """Checkpoints initialise biases to zero, which would hide a bias bug: make them random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> dict[str, Any]:
    from tiny_models import make_tiny_model

    mistral_dir = make_tiny_model(tmp_path_factory.mktemp("tiny-mistral"), "mistral")
    # Llama with attention biases, an MLP bias, 1 kv head and an odd head count exercises every
    # fused-weight path.
    odd_dir = make_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-odd"), "llama", num_attention_heads=3, num_key_value_heads=1,
        hidden_size=48, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
    )
    out = {}
    for name, d in (("llama", tiny_llama_dir), ("qwen2", tiny_qwen2_dir), ("mistral", mistral_dir), ("llama-odd", odd_dir)):
        model = load_hf_model(resolve(str(d)))
        randomise_biases(model)
        out[name] = model
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "llama-odd"])
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_prefill_and_decode_logits_match_transformers(tiny_models: dict[str, Any], arch: str, block_size: int) -> None:
    model = tiny_models[arch]
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0  # the biases are live
    eng = Engine(model, EngineConfig(block_size=block_size, max_kv_bytes=1 << 22, prefill_chunk=16))
    ids = torch.randint(3, model.config.vocab_size, (41,), generator=torch.Generator().manual_seed(7)).tolist()
    ref = hf_logits(model, ids)
    for split in (41, 17, 1):  # all prefill (in 16-token chunks); prefill then decode steps
        ours = eng.forward_logits(ids, split=split)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= TOL, (arch, block_size, split)
    assert eng.stats().referenced_blocks == 0


@pytest.mark.parametrize("attention", ["auto", "kernels"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_batched_decode_of_forked_rows_matches_each_row_alone(
    tiny_models: dict[str, Any], shared_prefix: bool, attention: str
) -> None:
    """Rows of two prompts, forked several times and grown unevenly, decoded in one batch:
    every row's logits equal transformers' on that row's full token sequence. ``auto`` runs
    the engine's CPU attention, ``kernels`` the kernels' reference."""
    model = tiny_models["qwen2"]
    eng = Engine(model, EngineConfig(block_size=4, max_kv_bytes=1 << 22, shared_prefix=shared_prefix, attention=attention))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 259, (n,), generator=g).tolist() for n in (13, 22)]
    roots = [eng.prefill(p).seq for p in prompts]
    rows = [eng.fork(roots[i % 2]) for i in range(6)]
    # Grow rows 0 and 1 alone first, so rows have different lengths, and fork row 0 once its
    # own block is full: rows 0 and 6 then share 4 blocks, the other rows of prompt 0 only 3.
    for t in (5, 6, 7):
        eng.decode_step(rows[:2], torch.tensor([t, t + 1]))
    rows.append(eng.fork(rows[0]))
    if shared_prefix:
        from ponder.workers.engine.attention import shared_groups

        group, depth, prefixes = shared_groups(rows, [r.length + 1 for r in rows], 4)
        assert depth == [4, 5, 3, 5, 3, 5, 4] and len(prefixes) == 4
        assert group[0] == group[6] and group[2] == group[4] and group[1] == group[3] == group[5]
        assert len({group[0], group[1], group[2]}) == 3 and 0 not in group
    for step in range(7):
        toks = torch.randint(3, 259, (len(rows),), generator=g)
        hidden = eng.decode_step(rows, toks)
        logits = eng.model.logits(hidden)
        for i, r in enumerate(rows):
            want = hf_logits(model, r.tokens)[-1]
            assert (logits[i] - want).abs().max().item() <= TOL, (step, i)


@pytest.fixture(scope="module")
def smollm2() -> Any:
    try:
        files = resolve("smollm2")
    except Exception as exc:  # the wheel is part of the dev setup; say so if it is missing
        pytest.skip(f"SmolLM2 not installed: {exc}")
    return load_hf_model(files)


def test_smollm2_logits_match_transformers(smollm2: Any) -> None:
    """The real model (GGUF, dequantised by transformers): a 40-token prefill plus 4 decode
    steps, then 2 rows decoded in one batch over a shared prefix."""
    ids = torch.randint(0, smollm2.config.vocab_size, (44,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = hf_logits(smollm2, ids)
    eng = Engine(smollm2, EngineConfig(block_size=16, max_kv_bytes=64 << 20))
    ours = eng.forward_logits(ids, split=40)
    assert (ours - ref).abs().max().item() <= TOL
    root = eng.prefill(ids[:40]).seq
    rows = [eng.fork(root), eng.fork(root)]
    hidden = eng.decode_step(rows, torch.tensor([ids[40], 17]))
    logits = eng.model.logits(hidden)
    assert (logits[0] - ref[40]).abs().max().item() <= TOL
    other = hf_logits(smollm2, ids[:40] + [17])[-1]
    assert (logits[1] - other).abs().max().item() <= TOL


def test_bfloat16_engine_stays_close_to_fp32_transformers(tiny_models: dict[str, Any]) -> None:
    """bf16 weights, activations and cache: not bit-exact, but within bf16 rounding."""
    model = tiny_models["qwen2"]
    ids = list(range(3, 60))
    ref = hf_logits(model, ids)
    eng = Engine(model, EngineConfig(block_size=8, max_kv_bytes=1 << 22, dtype="bfloat16"))
    assert eng.pool.k.dtype == torch.bfloat16
    ours = eng.forward_logits(ids, split=30)
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 2e-2 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_decode_through_the_triton_kernels(tiny_models: dict[str, Any], shared_prefix: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam: with PONDER_KERNELS=triton (the interpreter on the CPU, see conftest) the
    engine's calls reach the Triton launchers and give the same logits as transformers."""
    import os

    from ponder.kernels import ops

    needed = {"shared_prefix_attention" if shared_prefix else "paged_attention"}
    if not needed <= set(ops.TRITON) or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton attention kernels not registered or not in interpreter mode")
    monkeypatch.setenv("PONDER_KERNELS", "triton")
    (name,) = needed
    launcher, calls = ops.TRITON[name], []

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return launcher(*args, **kw)

    monkeypatch.setitem(ops.TRITON, name, counted)
    model = tiny_models["qwen2"]
    eng = Engine(model, EngineConfig(block_size=4, max_kv_bytes=1 << 22, shared_prefix=shared_prefix))
    root = eng.prefill(list(range(3, 20))).seq
    rows = [eng.fork(root) for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        logits = eng.model.logits(eng.decode_step(rows, torch.randint(3, 259, (3,), generator=g)))
        for i, r in enumerate(rows):
            assert (logits[i] - hf_logits(model, r.tokens)[-1]).abs().max().item() <= TOL
    assert len(calls) == 2 * model.config.num_hidden_layers  # every layer of both steps


def test_a_missing_bias_among_fused_projections_takes_the_weights_dtype_and_device() -> None:
    """Fused q/k/v (or gate/up) with only some biases: the missing ones are zeros like the
    weights (CPU fp32 zeros would not concatenate with a CUDA model's biases)."""
    from ponder.workers.engine.model import _cat_bias

    with_bias = torch.nn.Linear(4, 3, bias=True).to(torch.bfloat16)
    without = torch.nn.Linear(4, 2, bias=False).to(torch.bfloat16)
    b = _cat_bias(with_bias, without)
    assert b is not None and b.dtype == torch.bfloat16 and b.device == with_bias.weight.device
    assert torch.equal(b[:3], with_bias.bias.detach()) and torch.equal(b[3:], torch.zeros(2, dtype=torch.bfloat16))
    assert _cat_bias(without, without) is None
