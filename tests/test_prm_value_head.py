"""Value-head PRM: save/load round trip (any dtype), scoring through the fused op matches the
plain torch head, aggregation modes, and errors at the boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ponder.proto.errors import InvalidArgument
from ponder.workers.prm.value_head import ValueHead, ValueHeadVerifier
from ponder.workers.types import Node
from ponder.workers.verifier import aggregate


@pytest.mark.parametrize("kind,mlp_hidden", [("linear", 0), ("mlp", 0), ("mlp", 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip(tmp_path: Path, kind: str, mlp_hidden: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = ValueHead(13, kind, mlp_hidden)
    path = tmp_path / "head.safetensors"
    head.to(dtype).save(path)
    loaded = ValueHead.load(path)
    assert loaded.kind == kind and loaded.hidden_size == 13
    assert loaded.mlp_hidden == (mlp_hidden or 13 if kind == "mlp" else 0)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    h = torch.randn(5, 13)
    expect = head.float()(h)
    torch.testing.assert_close(loaded(h), expect)
    assert loaded(h).shape == (5,)


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        ValueHead.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidArgument):
        ValueHead.load(junk)


def _nodes(hidden: torch.Tensor) -> list[Node]:
    root = Node(id=0, parent=None, depth=0)
    return [Node(id=i + 1, parent=root, depth=1, hidden=hidden[i]) for i in range(hidden.shape[0])]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("mode", ["last", "min", "prod", "mean"])
def test_verifier_matches_torch_head_and_aggregates(kind: str, mode: str) -> None:
    torch.manual_seed(1)
    head = ValueHead(11, kind, 6)
    ver = ValueHeadVerifier(head)
    h1, h2 = torch.randn(3, 11), torch.randn(3, 11)
    nodes = _nodes(h1)
    out1 = ver.score(nodes, mode)
    want1 = torch.sigmoid(head(h1)).tolist()
    assert out1.scores == pytest.approx(want1, abs=1e-6)
    assert out1.aggregates == pytest.approx(want1, abs=1e-6)  # first step: aggregate = score
    assert out1.flops == pytest.approx(2.0 * head.n_params * 3)
    for n, s, a in zip(nodes, out1.scores, out1.aggregates):
        n.score, n.aggregate, n.n_scored = s, a, 1
    # second step on each path: aggregate folds the new score into the old one
    children = [Node(id=10 + i, parent=n, depth=2, hidden=h2[i], aggregate=n.aggregate, n_scored=1) for i, n in enumerate(nodes)]
    out2 = ver.score(children, mode)
    want2 = torch.sigmoid(head(h2)).tolist()
    assert out2.scores == pytest.approx(want2, abs=1e-6)
    for i in range(3):
        assert out2.aggregates[i] == pytest.approx(aggregate(want1[i], 1, want2[i], mode), abs=1e-6)


def test_verifier_errors() -> None:
    ver = ValueHeadVerifier(ValueHead(8))
    with pytest.raises(InvalidArgument):
        ver.check_policy(9)
    with pytest.raises(InvalidArgument):
        ver.score(_nodes(torch.randn(1, 9)), "last")
    with pytest.raises(InvalidArgument):
        ver.score(_nodes(torch.randn(1, 8)), "median")
    root = Node(id=0, parent=None, depth=0)
    with pytest.raises(Exception, match="hidden"):
        ver.score([Node(id=1, parent=root, depth=1)], "last")


def test_load_verifier_specs(tmp_path: Path) -> None:
    from fakes import ScriptedPolicy
    from ponder.workers.prm import load_verifier

    policy = ScriptedPolicy(hidden_size=8)
    path = tmp_path / "h.safetensors"
    ValueHead(8, "mlp").save(path)
    ver = load_verifier(str(path), policy)
    assert isinstance(ver, ValueHeadVerifier) and ver.head.kind == "mlp"
    r0, r0b, r1 = (load_verifier(s, policy) for s in ("random", "random:0", "random:1"))
    h = torch.randn(4, 8)
    assert torch.equal(r0.head(h), r0b.head(h)) and not torch.equal(r0.head(h), r1.head(h))  # type: ignore[union-attr]
    ValueHead(9).save(tmp_path / "wrong.safetensors")
    for bad in (str(tmp_path / "wrong.safetensors"), "random:x", str(tmp_path / "nothing"), f"outcome:{path}"):
        with pytest.raises(InvalidArgument):
            load_verifier(bad, policy)
