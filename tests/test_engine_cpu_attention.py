"""The engine's CPU decode attention against the kernels' PyTorch references (same contract):
both implementations, the fused C++ kernel (``cpu_fused``, fp32 and bf16) and the torch path, and the
choice between them (``PONDER_CPU_ATTENTION``, the fallback when the build fails)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from ponder.kernels.paged_attention import paged_attention_reference, shared_prefix_attention_reference
from ponder.workers.engine import cpu_attention, cpu_fused
from ponder.workers.engine.cpu_attention import shared_prefix_attention_cpu


@pytest.fixture(params=["fused", "torch"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once with each implementation (fp32 and bf16 tensors; fp16 always takes torch)."""
    if request.param == "torch":
        monkeypatch.setenv(cpu_fused.ENV, "torch")
    else:
        monkeypatch.setenv(cpu_fused.ENV, "fused")  # whatever the thread count
        if cpu_fused.kernel() is None:
            pytest.skip("the fused CPU attention kernel could not be built here (see the log)")
    yield request.param


def _spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls

SHAPES = [  # S, H_q, H_kv, D, block_size
    (1, 1, 1, 8, 1),
    (5, 6, 2, 16, 3),
    (7, 9, 3, 64, 16),
    (4, 8, 8, 32, 4),
    (6, 4, 1, 24, 5),
]


def setup(S: int, Hq: int, Hkv: int, D: int, BS: int, dtype: torch.dtype, seed: int, NB: int = 64):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn((NB, BS, Hkv, D), generator=g).to(dtype)  # stale finite data everywhere
    v = torch.randn((NB, BS, Hkv, D), generator=g).to(dtype)
    q = torch.randn((S, Hq, D), generator=g).to(dtype)
    perm = torch.randperm(NB, generator=g)
    return g, k, v, q, perm


@pytest.mark.parametrize("shape", SHAPES)
def test_paged_matches_the_reference(shape: tuple[int, ...], impl: str) -> None:
    S, Hq, Hkv, D, BS = shape
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, torch.float32, 0)
    lens = torch.randint(1, 4 * BS + 3, (S,), generator=g)
    nb = int((lens.max() + BS - 1) // BS)
    tables = perm[: S * nb].view(S, nb).int()
    want = paged_attention_reference(q, k, v, tables, lens.int(), scale=0.3)
    got = shared_prefix_attention_cpu(q, k, v, None, None, None, tables, lens.int(), 0.3)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_matches_the_reference(shape: tuple[int, ...], dtype: torch.dtype, impl: str) -> None:
    """Groups of unequal size and prefix length, an empty-prefix group, empty suffixes."""
    S, Hq, Hkv, D, BS = shape
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, dtype, 1)
    n_groups = 3
    prefix_lens = torch.tensor([0, BS, 3 * BS])[:n_groups]  # group 0: no prefix
    seq_group = torch.randint(0, n_groups, (S,), generator=g)
    suffix_lens = torch.randint(0, 2 * BS + 2, (S,), generator=g)
    suffix_lens = torch.where(prefix_lens[seq_group] + suffix_lens == 0, torch.ones_like(suffix_lens), suffix_lens)
    prefix_tables = perm[: 3 * n_groups].view(n_groups, 3).int()
    nbs = max(1, int((suffix_lens.max() + BS - 1) // BS))
    suffix_tables = perm[3 * n_groups : 3 * n_groups + S * nbs].view(S, nbs).int()
    args = (q, k, v, prefix_tables, prefix_lens.int(), seq_group.int(), suffix_tables, suffix_lens.int())
    want = shared_prefix_attention_reference(*args, scale=D**-0.5).float()
    got = shared_prefix_attention_cpu(*args, D**-0.5)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got.float() - want).abs().max().item() <= tol


def test_one_group_for_all_rows_and_long_prefix(impl: str) -> None:
    """The sampling job's shape: every row under one prompt, private suffixes of equal length."""
    g, k, v, q, perm = setup(16, 9, 3, 64, 16, torch.float32, 2)
    prefix_tables = perm[:5].view(1, 5).int()
    suffix_tables = perm[5:5 + 16 * 2].view(16, 2).int()
    args = (q, k, v, prefix_tables, torch.tensor([80]).int(), torch.zeros(16).int(), suffix_tables, torch.full((16,), 21).int())
    want = shared_prefix_attention_reference(*args, scale=0.125)
    assert (shared_prefix_attention_cpu(*args, 0.125) - want).abs().max().item() <= 1e-5


# -- the in-place path (one query per kv head, fp32 caches) and its edge cases ----------------


def _spy_path(monkeypatch: pytest.MonkeyPatch, impl: str) -> list[int]:
    """Count the calls that take the path under test: the fused kernel, or the torch path's
    in-place variant (one query per kv head, fp32 caches)."""
    if impl == "fused":
        return _spy(monkeypatch, cpu_fused, "attention")
    return _spy(monkeypatch, cpu_attention, "_attend_in_place")


def _shared_case(S: int, Hq: int, Hkv: int, D: int, BS: int, prefix_lens: list[int], seq_group: list[int],
                 suffix_lens: list[int], seed: int = 3):
    nbp = max(1, max((n + BS - 1) // BS for n in prefix_lens))
    G = len(prefix_lens)
    nbs = max(1, max((n + BS - 1) // BS for n in suffix_lens))
    g, k, v, q, perm = setup(S, Hq, Hkv, D, BS, torch.float32, seed, NB=max(64, G * nbp + S * nbs))
    prefix_tables = perm[: G * nbp].view(G, nbp).int()
    suffix_tables = perm[G * nbp : G * nbp + S * nbs].view(S, nbs).int()
    return (q, k, v, prefix_tables, torch.tensor(prefix_lens).int(), torch.tensor(seq_group).int(), suffix_tables,
            torch.tensor(suffix_lens).int())


@pytest.mark.parametrize(
    "case",
    [
        # rows of length 1, no prefix anywhere (paged attention's first decode step)
        dict(prefix_lens=[0], seq_group=[0, 0, 0, 0], suffix_lens=[1, 1, 1, 1]),
        # rows sharing a prefix whose own suffix is empty, one token, or several blocks
        dict(prefix_lens=[0, 32], seq_group=[1, 1, 1, 1], suffix_lens=[0, 1, 16, 37]),
        # rows without a prefix next to rows with one, unequal groups and prefix lengths
        dict(prefix_lens=[0, 16, 48], seq_group=[0, 1, 2, 2, 0, 1, 2], suffix_lens=[5, 0, 1, 33, 17, 16, 2]),
    ],
)
@pytest.mark.parametrize("heads", [(8, 8, 32), (4, 4, 16)])  # arith's shape and a smaller one
@pytest.mark.parametrize("block_size", [16, 4])
def test_fp32_edge_cases(case: dict, heads: tuple[int, int, int], block_size: int, impl: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    Hq, Hkv, D = heads
    calls = _spy_path(monkeypatch, impl)
    args = _shared_case(len(case["seq_group"]), Hq, Hkv, D, block_size, case["prefix_lens"], case["seq_group"],
                        case["suffix_lens"])
    want = shared_prefix_attention_reference(*args, scale=D**-0.5)
    got = shared_prefix_attention_cpu(*args, D**-0.5)
    assert calls, f"fp32 caches with one query per kv head take the {impl} path"
    assert (got - want).abs().max().item() <= 1e-5


def test_fp32_paged_rows_of_length_one_and_long(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_path(monkeypatch, impl)
    g, k, v, q, perm = setup(6, 8, 8, 32, 16, torch.float32, 4)
    lens = torch.tensor([1, 1, 16, 17, 100, 3]).int()
    tables = perm[: 6 * 7].view(6, 7).int()
    want = paged_attention_reference(q, k, v, tables, lens, scale=0.2)
    got = shared_prefix_attention_cpu(q, k, v, None, None, None, tables, lens, 0.2)
    assert calls and (got - want).abs().max().item() <= 1e-5


def test_one_plan_serves_every_layer(impl: str) -> None:
    """The engine builds the plan (and the in-place bookkeeping) once per step, on the first
    layer, and reuses it for the others: each layer's caches must still give its own result."""
    from ponder.workers.engine.cpu_attention import attend, make_plan

    args = _shared_case(5, 8, 8, 32, 16, [0, 32], [1, 1, 0, 1, 0], [3, 20, 7, 0, 49])
    q, k, v, pt, pl, sg, st, sl = args
    plan = make_plan(16, pt, pl, sg, st, sl)
    for layer in range(3):
        g = torch.Generator().manual_seed(10 + layer)
        kl, vl = torch.randn(k.shape, generator=g), torch.randn(v.shape, generator=g)
        ql = torch.randn(q.shape, generator=g)
        want = shared_prefix_attention_reference(ql, kl, vl, pt, pl, sg, st, sl, scale=0.17)
        assert (attend(ql, kl, vl, plan, 0.17) - want).abs().max().item() <= 1e-5
    # the torch path's bookkeeping is built once, and only when that path runs
    assert (plan.torch_plan is not None and plan.torch_plan.flat is not None) == (impl == "torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gqa_smollm2_shape(dtype: torch.dtype, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2's heads (9 query heads over 3 kv heads, D 64): on the torch path G > 1 keeps the
    bmm path (never the in-place one); fp32 and bf16 take the fused kernel when it is on."""
    calls = _spy(monkeypatch, cpu_attention, "_attend_in_place")
    fused_calls = _spy(monkeypatch, cpu_fused, "attention")
    q, k, v, pt, pl, sg, st, sl = _shared_case(
        6, 9, 3, 64, 16, [0, 80, 32], [1, 1, 1, 2, 0, 2], [1, 0, 21, 40, 5, 16], seed=5
    )
    args = (q.to(dtype), k.to(dtype), v.to(dtype), pt, pl, sg, st, sl)
    want = shared_prefix_attention_reference(*args, scale=0.125).float()
    got = shared_prefix_attention_cpu(*args, 0.125)
    assert not calls and got.dtype == dtype
    assert bool(fused_calls) == (impl == "fused")
    assert (got.float() - want).abs().max().item() <= (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("heads", [(8, 8, 32), (9, 3, 64)])  # G = 1 and G = 3
def test_fp32_long_contexts_and_gqa(block_size: int, heads: tuple[int, int, int], impl: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefixes and suffixes of hundreds of slots (many blocks, many online-softmax rescales)
    next to short rows, rows without a prefix, and an empty suffix."""
    Hq, Hkv, D = heads
    BS = block_size
    g = torch.Generator().manual_seed(6)
    nbp, nbs = 1200 // BS, 700 // BS + 1
    NB = 3 * nbp + 8 * nbs
    k = torch.randn((NB, BS, Hkv, D), generator=g) * 2  # spread scores: the running max moves
    v = torch.randn((NB, BS, Hkv, D), generator=g)
    q = torch.randn((8, Hq, D), generator=g)
    perm = torch.randperm(NB, generator=g)
    prefix_lens = torch.tensor([0, 1200, 400 - 3 * BS]).int()  # the last one ends mid-table
    prefix_tables = perm[: 3 * nbp].view(3, nbp).int()
    seq_group = torch.tensor([1, 1, 1, 2, 2, 0, 0, 1]).int()
    suffix_lens = torch.tensor([700, 1, 0, 333, 2 * BS, 1, 650, BS + 1]).int()
    suffix_tables = perm[3 * nbp : 3 * nbp + 8 * nbs].view(8, nbs).int()
    args = (q, k, v, prefix_tables, prefix_lens, seq_group, suffix_tables, suffix_lens)
    calls = _spy(monkeypatch, cpu_fused, "attention")
    want = shared_prefix_attention_reference(*args, scale=D**-0.5)
    got = shared_prefix_attention_cpu(*args, D**-0.5)
    assert bool(calls) == (impl == "fused")
    assert (got - want).abs().max().item() <= 1e-5
    # the same rows as plain paged attention (no groups): one table per row
    lens = torch.tensor([700, 1, 1200, 5, 650]).int()
    tables = perm[: 5 * nbp].view(5, nbp).int()
    want = paged_attention_reference(q[:5], k, v, tables, lens, scale=0.05)
    assert (shared_prefix_attention_cpu(q[:5], k, v, None, None, None, tables, lens, 0.05) - want).abs().max() <= 1e-5


@pytest.mark.parametrize("heads", [(8, 8, 32), (9, 3, 64)])  # G = 1 and G = 3
def test_bf16_is_the_fp32_result_rounded_once(heads: tuple[int, int, int], impl: str) -> None:
    """bf16 caches and queries over long prefixes and suffixes: the kernel widens them exactly
    and accumulates in fp32, so its output is the fp32 attention of the same bf16 inputs
    rounded to bf16 once (within one bf16 step where the fp32 sums differ in their last bits);
    the torch path (bf16 matmuls and softmax) is held to the looser tolerance of bf16
    arithmetic."""
    Hq, Hkv, D = heads
    BS = 16
    g = torch.Generator().manual_seed(7)
    nbp, nbs = 608 // BS, 500 // BS + 1
    NB = 2 * nbp + 6 * nbs
    k = (torch.randn((NB, BS, Hkv, D), generator=g) * 2).bfloat16()
    v = torch.randn((NB, BS, Hkv, D), generator=g).bfloat16()
    q = torch.randn((6, Hq, D), generator=g).bfloat16()
    perm = torch.randperm(NB, generator=g)
    prefix_tables = perm[: 2 * nbp].view(2, nbp).int()
    suffix_tables = perm[2 * nbp : 2 * nbp + 6 * nbs].view(6, nbs).int()
    rest = (prefix_tables, torch.tensor([0, 600]).int(), torch.tensor([1, 1, 0, 1, 0, 1]).int(), suffix_tables,
            torch.tensor([500, 1, 3, 0, 77, 250]).int())
    want = shared_prefix_attention_reference(q.float(), k.float(), v.float(), *rest, scale=D**-0.5)
    got = shared_prefix_attention_cpu(q, k, v, *rest, D**-0.5)
    assert got.dtype == torch.bfloat16
    err = (got.float() - want).abs()
    if impl == "fused":
        step = want.abs().clamp_min(1e-30) * 2.0**-7  # one bf16 step at |want| (8 significant bits)
        assert bool((err <= step).all()), f"worst {float((err / step).max()):.2f} bf16 steps"
        assert float((got.float() == want.bfloat16().float()).float().mean()) > 0.97  # mostly the rounded fp32
    else:
        assert float(err.max()) <= 2e-2


# -- choosing the implementation ---------------------------------------------------------------


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process that has not tried the build yet; forgotten again afterwards (the next user
    loads the cached library, milliseconds)."""
    monkeypatch.delenv(cpu_fused.ENV, raising=False)
    cpu_fused._reset()
    yield
    cpu_fused._reset()


def _arith_case() -> tuple[torch.Tensor, ...]:
    return _shared_case(5, 8, 8, 32, 16, [0, 32], [1, 1, 0, 1, 0], [3, 20, 7, 0, 49])


def test_attend_picks_the_fused_kernel_when_it_builds(fresh_build: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if cpu_fused.kernel() is None:
        pytest.skip("the fused CPU attention kernel could not be built here (see the log)")
    assert cpu_fused.name() == "fused-cpp"
    monkeypatch.setenv(cpu_fused.ENV, "fused")  # whatever the thread count (auto: one thread only)
    fused = _spy(monkeypatch, cpu_fused, "attention")
    torch_path = _spy(monkeypatch, cpu_attention, "_attend_torch")
    args = _arith_case()
    want = shared_prefix_attention_reference(*args, scale=0.2)
    assert (shared_prefix_attention_cpu(*args, 0.2) - want).abs().max().item() <= 1e-5
    assert fused and not torch_path
    # bf16 is the kernel's too; fp16 is not: the torch path, same process
    q, k, v, *rest = args
    shared_prefix_attention_cpu(q.bfloat16(), k.bfloat16(), v.bfloat16(), *rest, 0.2)  # type: ignore[arg-type]
    assert len(fused) == 2 and not torch_path
    got = shared_prefix_attention_cpu(q.half(), k.half(), v.half(), *rest, 0.2)  # type: ignore[arg-type]
    assert len(fused) == 2 and torch_path and got.dtype == torch.float16


def test_env_var_selects_the_torch_path(fresh_build: None, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(cpu_fused.ENV, "torch")
    built = _spy(monkeypatch, cpu_fused, "_build")
    fused = _spy(monkeypatch, cpu_fused, "attention")
    args = _arith_case()
    want = shared_prefix_attention_reference(*args, scale=0.2)
    with caplog.at_level(logging.INFO, logger=cpu_fused.__name__):
        for _ in range(2):
            assert (shared_prefix_attention_cpu(*args, 0.2) - want).abs().max().item() <= 1e-5
    assert not built and not fused and cpu_fused.name() == "torch"
    assert sum("PONDER_CPU_ATTENTION=torch" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_failed_build_falls_back_to_torch(fresh_build: None, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from torch.utils import cpp_extension

    tries: list[int] = []

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", broken)
    fused = _spy(monkeypatch, cpu_fused, "attention")
    args = _arith_case()
    want = shared_prefix_attention_reference(*args, scale=0.2)
    with caplog.at_level(logging.INFO, logger=cpu_fused.__name__):
        for _ in range(3):
            assert (shared_prefix_attention_cpu(*args, 0.2) - want).abs().max().item() <= 1e-5
    assert len(tries) == 1 and not fused and cpu_fused.name() == "torch"  # tried once per process
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Ninja is required" in warnings[0].getMessage()


def test_fused_kernel_rejects_bad_indices(impl: str) -> None:
    if impl != "fused":
        pytest.skip("the fused kernel's own checks")
    fn = cpu_fused.kernel()
    assert fn is not None
    q, k, v, pt, pl, sg, st, sl = _arith_case()
    NB = k.shape[0]
    bad_block = st.clone()
    bad_block[1, 0] = NB
    with pytest.raises(IndexError, match="block id"):
        cpu_fused.attention(fn, q, k, v, bad_block, sl, pt, pl, sg, 0.2)
    with pytest.raises(IndexError, match="length"):
        cpu_fused.attention(fn, q, k, v, st, sl + 16 * st.shape[1], pt, pl, sg, 0.2)
    with pytest.raises(IndexError, match="seq_group"):
        cpu_fused.attention(fn, q, k, v, st, sl, pt, pl, sg + 5, 0.2)


def test_auto_takes_the_kernel_at_one_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset (auto): the kernel at one torch thread, where it measured faster; the torch path
    at more, where it measured slower. ``fused`` and ``torch`` override the thread count."""
    monkeypatch.delenv(cpu_fused.ENV, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_fused.wanted()
        torch.set_num_threads(2)
        assert not cpu_fused.wanted()
        monkeypatch.setenv(cpu_fused.ENV, "fused")
        assert cpu_fused.wanted()
        monkeypatch.setenv(cpu_fused.ENV, "torch")
        torch.set_num_threads(1)
        assert not cpu_fused.wanted()
    finally:
        torch.set_num_threads(threads)
