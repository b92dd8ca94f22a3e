"""Separate PRM models, loaded from a local directory, scoring only each node's new step.

Two layouts:

- ``qwen`` — Qwen2.5-Math-PRM style (``Qwen2ForProcessRewardModel``): a Qwen2 decoder and a
  score head ``score.0`` (D→D) → ReLU → ``score.2`` (D→2) read at the step-separator token
  ``<extra_0>`` that follows every step; the step score is P(class 1) = softmax(logits)[1] =
  sigmoid(l1 − l0). The question goes in a chat prompt; steps follow as the assistant's text.
- ``shepherd`` — Math-Shepherd style: a causal LM; after every step comes the tag ``ки``, and the
  score is P("+") among {"+", "−"} at the tag = sigmoid(logit₊ − logit₋).

Both end in the fused op ``ponder.kernels.prm_score`` with a (2, D) head (the "+"/class-1 row and
the "−"/class-0 row), which squashes the difference and folds the step score into the path's
aggregate (last/min/prod/mean).

Modes: ``step`` (the default) reads a score after every step; ``outcome`` reads one score for the
whole solution so far — the steps are joined as plain text (no separators between them) and the
tag is appended only to be read, never cached; its aggregate is always that latest score.

Each scored node keeps the PRM's KV cache of its path in ``node.verifier_state``, so scoring a
child costs only the child's tokens (plus the uncached tag in outcome mode); a node whose parent
was never scored or was released extends its nearest cached ancestor. ``release`` drops the
cache. FLOPs: 2·P per token processed, P the PRM's non-embedding parameters (DESIGN.md).

At load, each layout checks that its separator/tag tokenises to the id it expects inside a step
(DESIGN.md, "step-separator tokenisation bugs"), and raises InvalidArgument if not. A directory
may override the defaults in ``ponder_prm.json`` (keys of :class:`PRMFormat`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ponder.kernels import prm_score
from ponder.proto.config import AGGREGATIONS, DEFAULT_STEP_DELIMITER
from ponder.proto.errors import InvalidArgument
from ponder.workers.models import non_embedding_params
from ponder.workers.prm.prefix_cache import IncrementalDecoder, PrefixState, Row
from ponder.workers.types import Node, ScoreOutput
from ponder.workers.verifier import Verifier

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_PROMPT = (
    "<|im_start|>system\n" + QWEN_SYSTEM.replace("{}", "{{}}") + "<|im_end|>\n"
    "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class PRMFormat:
    """How a PRM reads a solution. ``step_suffix`` follows each step and contains ``tag``, the
    token whose hidden state is scored; ``outcome_join`` separates steps in outcome mode."""

    layout: str  # qwen | shepherd
    prompt_template: str
    step_suffix: str
    tag: str
    good: str = "+"
    bad: str = "-"
    outcome_join: str = DEFAULT_STEP_DELIMITER

    @classmethod
    def default(cls, layout: str) -> PRMFormat:
        if layout == "qwen":
            return cls("qwen", QWEN_PROMPT, "<extra_0>", "<extra_0>")
        if layout == "shepherd":
            return cls("shepherd", "{question} ", " ки\n", "ки")
        raise InvalidArgument("prm", f"unknown PRM layout {layout!r}; expected qwen or shepherd")


class ModelPRM(Verifier):
    """A PRM model scoring nodes incrementally. Build with :func:`load_prm`."""

    def __init__(
        self,
        decoder: Any,
        tokenizer: Any,
        fmt: PRMFormat,
        head_body: torch.nn.Module | None,
        head: torch.Tensor,
        head_bias: float,
        *,
        mode: str = "step",
        name: str = "prm",
        n_params: int = 0,
    ) -> None:
        if mode not in ("step", "outcome"):
            raise InvalidArgument("prm_mode", f"must be step or outcome, got {mode!r}")
        self.decoder, self.tokenizer, self.fmt = decoder, tokenizer, fmt
        self.head_body = head_body  # (D → D) + ReLU for the qwen head; None for shepherd
        self.head = head.float()  # (2, D): [good/class-1 row, bad/class-0 row]
        self.head_bias = head_bias
        self.mode = mode
        self.name = name
        self.n_params = n_params
        pad = tokenizer.pad_token_id
        self.runner = IncrementalDecoder(decoder, int(pad if pad is not None else 0))
        self.tag_id = self.check_tokenisation()
        self.suffix_ids = self.encode(fmt.step_suffix)

    def to(self, device: str | torch.device) -> ModelPRM:
        """Move the PRM's weights (its decoder and head) to ``device``; inputs follow."""
        self.decoder.to(device)
        if self.head_body is not None:
            self.head_body.to(device)
        self.head = self.head.to(device)
        return self

    # -- text → tokens ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_tokenisation(self) -> int:
        """The tag's id, after checking it tokenises to that one id alone, at the end of a
        step and in the suffix. Raises InvalidArgument naming what went wrong."""
        fmt = self.fmt
        alone = self.encode(fmt.tag)
        if len(alone) != 1:
            raise InvalidArgument("prm", f"{fmt.layout} tag {fmt.tag!r} tokenises to {alone}, not to one id")
        tag_id = alone[0]
        for sample in ("Step 1: 2 + 3 = 5.", "So the answer is \\boxed{5}.", "x"):
            ids = self.encode(sample + fmt.step_suffix)
            if ids.count(tag_id) != 1:
                raise InvalidArgument(
                    "prm", f"{fmt.layout} tag {fmt.tag!r} (id {tag_id}) is not found once after a step: {ids[-6:]}"
                )
        if fmt.layout == "shepherd":
            for word in (fmt.good, fmt.bad):
                if len(self.encode(word)) != 1:
                    raise InvalidArgument("prm", f"shepherd label {word!r} is not a single token")
        return tag_id

    def prompt_ids(self, node: Node) -> list[int]:
        question = node.root.prompt.question if node.root.prompt is not None else node.root.text
        return self.encode(self.fmt.prompt_template.format(question=question))

    def step_ids(self, step: Node) -> list[int]:
        """The tokens step ``step`` adds to the PRM's cache."""
        text = step.text.strip()
        if self.mode == "outcome":
            return self.encode((self.fmt.outcome_join if step.depth > 1 else "") + text)
        return self.encode(text + self.fmt.step_suffix)

    # -- scoring ----------------------------------------------------------------------------

    def _row(self, node: Node) -> tuple[Row, int]:
        """The forward row for ``node`` and the index (in its new tokens) of the read token."""
        assert node.depth > 0, "the PRM scores steps, not the question"
        todo: list[Node] = []
        anchor: Node | None = node.parent
        while anchor is not None and anchor.verifier_state is None:
            todo.append(anchor)
            anchor = anchor.parent
        past: PrefixState | None = anchor.verifier_state if anchor is not None else None
        new: list[int] = []
        for step in reversed(todo):  # ancestors without a cache, root first
            new += self.prompt_ids(step) if step.depth == 0 else self.step_ids(step)
        new += self.step_ids(node)
        keep = len(new)
        if self.mode == "outcome":  # the tag is read, not cached
            new += self.suffix_ids
        # the last tag in the new tokens (found by id, so a merge across the boundary of step
        # text and suffix cannot shift the read position)
        at = len(new) - 1 - new[::-1].index(self.tag_id)
        return Row(past, new, keep), at

    @torch.inference_mode()
    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        if aggregation not in AGGREGATIONS:
            raise InvalidArgument("options.aggregation", f"unknown aggregation {aggregation!r}")
        if not nodes:
            return ScoreOutput(scores=[], aggregates=[])
        built = [self._row(n) for n in nodes]
        rows = [r for r, _ in built]
        hidden, states = self.runner.run(rows)  # (B, N, D)
        B, N, D = hidden.shape
        dev = hidden.device  # the PRM's device (it follows the policy's: see to())
        flat_rows = torch.tensor([b * N + at for b, (_, at) in enumerate(built)], dtype=torch.long, device=dev)
        flat = hidden.reshape(B * N, D)
        if self.head_body is not None:  # the MLP body in torch on the B read rows only
            flat = self.head_body(flat.index_select(0, flat_rows).float())
            flat_rows = torch.arange(B, dtype=torch.long, device=dev)
        mode = "last" if self.mode == "outcome" else aggregation
        prev = torch.tensor([n.aggregate if n.aggregate is not None else 0.0 for n in nodes], dtype=torch.float32, device=dev)
        n_prev = torch.tensor([n.n_scored if n.aggregate is not None else 0 for n in nodes], dtype=torch.int32, device=dev)
        head = self.head.to(device=dev, dtype=flat.dtype)
        scores, aggs = prm_score(flat.contiguous(), flat_rows, head, prev, n_prev, mode, bias=self.head_bias)
        for node, state in zip(nodes, states):
            node.verifier_state = state
        tokens = sum(len(r.new_ids) for r in rows)
        return ScoreOutput(
            scores=scores.tolist(), aggregates=aggs.tolist(), prm_tokens=tokens, flops=2.0 * self.n_params * tokens
        )

    def release(self, nodes: list[Node]) -> None:
        for n in nodes:
            n.verifier_state = None


# -- loading --------------------------------------------------------------------------------


def _read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = f.get_tensor(key).float()
    return out


def detect_layout(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    return "qwen" if any("ProcessRewardModel" in a for a in archs) else "shepherd"


def load_prm(path: str | Path, *, mode: str = "step", layout: str | None = None) -> ModelPRM:
    """Load a PRM directory (config.json, safetensors, tokenizer) on the CPU in fp32."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise InvalidArgument("prm", f"{p} is not a model directory with config.json")
    config = json.loads((p / "config.json").read_text())
    layout = layout or detect_layout(config)
    fmt = PRMFormat.default(layout)
    extra = p / "ponder_prm.json"
    if extra.is_file():
        known = {f.name for f in fields(PRMFormat)}
        fmt = replace(fmt, **{k: v for k, v in json.loads(extra.read_text()).items() if k in known})
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    if layout == "qwen":
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the score.* tensors are ours to load, not "unexpected"
        try:
            decoder = AutoModel.from_pretrained(str(p), dtype=torch.float32).eval()
        finally:
            hf_logging.set_verbosity(level)
        w = _read_tensors(p, "score.")
        if not {"0.weight", "2.weight"} <= set(w):
            raise InvalidArgument("prm", f"{p} has no score.0/score.2 head (found {sorted(w)})")
        d_out, d_in = w["0.weight"].shape
        first = torch.nn.Linear(d_in, d_out)
        body = torch.nn.Sequential(first, torch.nn.ReLU())
        first.weight.data.copy_(w["0.weight"])
        first.bias.data.copy_(w.get("0.bias", torch.zeros(first.out_features)))
        w2, b2 = w["2.weight"], w.get("2.bias", torch.zeros(2))  # (2, D), (2,)
        if w2.shape[0] != 2:
            raise InvalidArgument("prm", f"score head has {w2.shape[0]} classes, expected 2")
        head, bias = torch.stack([w2[1], w2[0]]), float(b2[1] - b2[0])
        n_params = non_embedding_params(decoder) + sum(t.numel() for t in w.values())
        body.eval()
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        decoder, body = lm.get_decoder(), None
        out = lm.get_output_embeddings()
        good, bad = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (fmt.good, fmt.bad))
        if len(good) != 1 or len(bad) != 1:
            raise InvalidArgument("prm", f"labels {fmt.good!r}/{fmt.bad!r} must be single tokens, got {good}/{bad}")
        head = torch.stack([out.weight[good[0]], out.weight[bad[0]]]).detach()
        bias = float(out.bias[good[0]] - out.bias[bad[0]]) if getattr(out, "bias", None) is not None else 0.0
        n_params = non_embedding_params(lm)
    return ModelPRM(decoder, tokenizer, fmt, body, head, bias, mode=mode, name=f"{layout}-prm:{p.name}", n_params=n_params)
