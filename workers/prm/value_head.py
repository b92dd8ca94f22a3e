"""Value-head PRM: a small head on the policy's own step-end hidden states.

Scoring costs no extra forward pass: the policy already returns ``node.hidden`` — the last
hidden state (after the final norm) at the token that ended the step, shape (D,). The head maps
it to one logit; ``sigmoid(logit)`` is the step score in [0, 1].

Stable interface (the value-head trainer builds and saves heads with exactly this class)::

    head = ValueHead(hidden_size, kind="linear" | "mlp", mlp_hidden=0)
    logits = head(h)                  # h: (N, D) any float dtype -> (N,) float32 logits
    head.save(path)                   # one safetensors file
    head = ValueHead.load(path)       # fp32, eval mode, whatever dtype it was saved in

- ``kind="linear"``: ``logit = h · w + b`` (parameters ``out.weight`` (1, D), ``out.bias`` (1,)).
- ``kind="mlp"``: ``logit = out(gelu(body(h)))`` with ``body`` a (D → H) linear layer and
  ``out`` (H → 1); ``mlp_hidden=0`` means H = D.

The file's metadata holds ``format="ponder-value-head"``, ``kind``, ``hidden_size`` and
``mlp_hidden`` (strings, as safetensors requires). Tensors are stored under the state-dict
names above; a file saved in bf16/fp16 loads as fp32.

:class:`ValueHeadVerifier` scores nodes through the fused op ``ponder.kernels.prm_score``
(gather → head → sigmoid → last/min/prod/mean aggregation): for a linear head the whole head is
the op's (D,) weight and bias; for an MLP head the body runs in torch and the op applies the
final linear layer, the sigmoid and the aggregation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ponder.kernels import prm_score
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.workers.types import Node, ScoreOutput
from ponder.workers.verifier import AGGREGATIONS, Verifier

FORMAT = "ponder-value-head"
KINDS = ("linear", "mlp")


class ValueHead(nn.Module):
    """Hidden state (N, D) → step logit (N,). See the module docstring for the contract."""

    def __init__(self, hidden_size: int, kind: str = "linear", mlp_hidden: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"value head kind must be one of {KINDS}, got {kind!r}")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        if mlp_hidden < 0:
            raise ValueError(f"mlp_hidden must be >= 0, got {mlp_hidden}")
        self.kind = kind
        self.hidden_size = int(hidden_size)
        self.mlp_hidden = int(mlp_hidden or hidden_size) if kind == "mlp" else 0
        self.body: nn.Linear | None = None
        if kind == "mlp":
            self.body = nn.Linear(self.hidden_size, self.mlp_hidden)
            self.out = nn.Linear(self.mlp_hidden, 1)
        else:
            self.out = nn.Linear(self.hidden_size, 1)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The input of the final linear layer: (N, D) → (N, D) or (N, H)."""
        h = h.to(self.out.weight.dtype)
        if self.body is None:
            return h
        return torch.nn.functional.gelu(self.body(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"ValueHead expects (N, {self.hidden_size}), got {tuple(h.shape)}")
        return self.out(self.features(h)).squeeze(-1)  # (N,)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "hidden_size": str(self.hidden_size),
            "mlp_hidden": str(self.mlp_hidden),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> ValueHead:
        """Load a head saved by :meth:`save` (any float dtype) as fp32, in eval mode."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise InvalidArgument("value_head", f"{p} does not exist")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a truncated or foreign file
            raise InvalidArgument("value_head", f"{p} is not a safetensors file: {exc}") from exc
        try:
            head = cls(int(meta["hidden_size"]), meta.get("kind", "linear"), int(meta.get("mlp_hidden", "0")))
        except (KeyError, ValueError) as exc:
            raise InvalidArgument("value_head", f"{p} lacks valid value-head metadata: {exc}") from exc
        try:
            head.load_state_dict({k: v.float() for k, v in tensors.items()})
        except RuntimeError as exc:
            raise InvalidArgument("value_head", f"{p} does not match its metadata: {exc}") from exc
        return head.float().eval()


class ValueHeadVerifier(Verifier):
    """Scores each node's newest step from ``node.hidden`` (no forward pass of any model).

    FLOPs: 2 per head parameter per scored step (2·D for a linear head, DESIGN.md).
    """

    def __init__(self, head: ValueHead | str | Path, *, name: str = "") -> None:
        self.head = head if isinstance(head, ValueHead) else ValueHead.load(head)
        self.head.float().eval()
        self.name = name or f"value-head-{self.head.kind}"
        self.n_params = self.head.n_params

    def check_policy(self, hidden_size: int) -> None:
        """Raise InvalidArgument when the head does not fit the policy's hidden size."""
        if hidden_size != self.head.hidden_size:
            raise InvalidArgument(
                "value_head",
                f"head expects hidden size {self.head.hidden_size}, the policy has {hidden_size}",
            )

    @torch.inference_mode()
    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        if aggregation not in AGGREGATIONS:
            raise InvalidArgument("options.aggregation", f"unknown aggregation {aggregation!r}")
        if not nodes:
            return ScoreOutput(scores=[], aggregates=[])
        missing = [n.id for n in nodes if n.hidden is None]
        if missing:
            raise PonderError(f"value head: nodes {missing[:5]} carry no hidden state (policy returned none)")
        hidden = torch.stack([n.hidden.reshape(-1) for n in nodes if n.hidden is not None]).float()  # (B, D)
        if hidden.shape[1] != self.head.hidden_size:
            self.check_policy(int(hidden.shape[1]))
        dev = hidden.device  # the policy's device (the engine may run on a GPU): move the head once
        if self.head.out.weight.device != dev:
            self.head.to(dev)
        feats = self.head.features(hidden)  # (B, D) or (B, H)
        B = feats.shape[0]
        rows = torch.arange(B, dtype=torch.long, device=dev)
        w = self.head.out.weight[0].float()  # (D,) or (H,)
        bias = float(self.head.out.bias[0])
        prev = torch.tensor(
            [n.aggregate if n.aggregate is not None else 0.0 for n in nodes], dtype=torch.float32, device=dev
        )
        n_prev = torch.tensor([n.n_scored if n.aggregate is not None else 0 for n in nodes], dtype=torch.int32, device=dev)
        scores, aggs = prm_score(feats.contiguous(), rows, w, prev, n_prev, aggregation, bias=bias)
        return ScoreOutput(
            scores=scores.tolist(),
            aggregates=aggs.tolist(),
            prm_tokens=0,
            flops=2.0 * self.n_params * B,
        )
