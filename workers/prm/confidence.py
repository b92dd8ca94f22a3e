"""The confidence verifier: scores a partial solution from the token probabilities the policy
computed while sampling it (the DeepConf family, Fu et al. 2025), with no forward pass of any
model.

Every node carries ``logprobs`` — log p of each of its step's tokens under the policy at
temperature 1 (``StepOutput.logprobs``). The score of a node is computed over the whole path
root→node, so that the paper's ``last`` aggregation (a solution scored by its final step) scores
the whole solution, and ``min``/``prod`` still fold per-step values. Features of the path:

- ``mean``: mean token log-prob (DeepConf's average trace confidence);
- ``window_min``: the lowest mean over sliding windows of ``window`` tokens (lowest group
  confidence: one slipped digit shows here even in a long solution);
- ``tail``: the mean over the last ``tail`` tokens;
- ``token_min``: the single least likely token;
- ``step_mean``: the mean over the newest step only;
- ``length``: path tokens / 100.

A :class:`Calibration` fitted once per model (``ponder train confidence``; logistic regression on
the standardised features against the correctness of the sample's final answer, i.e. Platt
scaling with several inputs) maps them to P(correct) in [0, 1], so weighted voting and the
aggregates mean what they mean for a PRM. Without one the score is ``exp(mean)``, the
geometric-mean token probability: in [0, 1] and monotone in confidence, but not calibrated.

The calibration file (JSON, ``format: "ponder-confidence"``) names the model it was fitted on and
a fingerprint of its files; loading it for another model is ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import check_vote_power
from ponder.workers.types import Node, ScoreOutput
from ponder.workers.verifier import AGGREGATIONS, Verifier, aggregate

FORMAT = "ponder-confidence"
FEATURES = ("mean", "window_min", "tail", "token_min", "step_mean", "length")
CALIBRATION_FILE = "confidence.json"


def path_logprobs(node: Node) -> list[float]:
    """Log-probs of every sampled token from the first step through ``node``."""
    out: list[float] = []
    for step in node.path():
        out.extend(step.logprobs)
    return out


def features(lps: Sequence[float], newest: Sequence[float], window: int, tail: int) -> list[float]:
    """The feature vector (in :data:`FEATURES` order) of a path's token log-probs ``lps`` whose
    newest step holds ``newest``. An empty path scores as certain (log-prob 0)."""
    if not lps:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    n = len(lps)
    mean = sum(lps) / n
    w = max(1, min(window, n))
    run = sum(lps[:w])
    low = run
    for i in range(w, n):  # sliding-window sums, O(n)
        run += lps[i] - lps[i - w]
        low = min(low, run)
    t = lps[-max(1, min(tail, n)) :]
    step_mean = sum(newest) / len(newest) if newest else mean
    return [mean, low / w, sum(t) / len(t), min(lps), step_mean, n / 100.0]


@dataclass(frozen=True)
class Calibration:
    """Logistic regression on standardised confidence features, fitted for one model.
    Subclasses fit other feature sets (the likelihood verifier's) with the same machinery."""

    KIND: ClassVar[str] = "confidence"
    FORMAT: ClassVar[str] = FORMAT
    FEATURES: ClassVar[tuple[str, ...]] = FEATURES

    model: str
    fingerprint: str
    window: int
    tail: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    fit: dict[str, Any] = field(default_factory=dict)  # how it was fitted and its held-out figures
    # The weighted vote counts each sample as its score raised to this power (1: the sum of
    # scores). Fitted on held-out questions by `ponder train vote`, saved with the fit.
    vote_power: float = 1.0

    def __post_init__(self) -> None:
        k, kind = len(self.FEATURES), self.KIND
        if not (len(self.mean) == len(self.std) == len(self.weights) == k):
            raise InvalidArgument("verifier", f"a {kind} calibration needs {k} means, stds and weights")
        if self.window < 1 or self.tail < 1:
            raise InvalidArgument("verifier", f"{kind} calibration window and tail must be >= 1")
        if any(s <= 0 or not math.isfinite(s) for s in self.std):
            raise InvalidArgument("verifier", f"{kind} calibration stds must be finite and > 0")
        if not all(math.isfinite(x) for x in (*self.mean, *self.weights, self.bias)):
            raise InvalidArgument("verifier", f"{kind} calibration values must be finite")
        check_vote_power(self.vote_power, "verifier", f"{kind} calibration vote_power")

    def probability(self, x: Sequence[float]) -> float:
        z = self.bias + sum(w * (v - m) / s for w, v, m, s in zip(self.weights, x, self.mean, self.std))
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def save(self, path: str | Path) -> None:
        data = {"format": self.FORMAT, "features": list(self.FEATURES), **asdict(self)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Any:
        p, kind = Path(path), cls.KIND
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise InvalidArgument("verifier", f"{kind} calibration {p} does not exist") from None
        except (OSError, ValueError) as exc:
            raise InvalidArgument("verifier", f"{kind} calibration {p} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise InvalidArgument("verifier", f"{p} is not a {kind} calibration (format {cls.FORMAT!r})")
        if tuple(data.get("features", ())) != cls.FEATURES:
            raise InvalidArgument("verifier", f"{p} was fitted on features {data.get('features')}, this version reads "
                                              f"{list(cls.FEATURES)}: refit it with `ponder train {kind}`")
        try:
            return cls(
                model=str(data["model"]), fingerprint=str(data["fingerprint"]), window=int(data["window"]),
                tail=int(data["tail"]), mean=tuple(map(float, data["mean"])), std=tuple(map(float, data["std"])),
                weights=tuple(map(float, data["weights"])), bias=float(data["bias"]), fit=dict(data.get("fit", {})),
                vote_power=float(data.get("vote_power", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("verifier", f"{kind} calibration {p} is incomplete: {exc}") from exc


def model_fingerprint(files: Any) -> str:
    """A short hash that changes when the model's weights/config/tokenizer files change:
    config and tokenizer files' bytes plus the weight files' names and sizes (hashing GBs of
    weights at every worker start would be slow)."""
    h = hashlib.sha256()
    root = Path(files.path)
    if getattr(files, "gguf_file", None):
        f = root / files.gguf_file
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (root / name).exists():
                h.update(name.encode() + (root / name).read_bytes())
        for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def calibration_path(files: Any) -> Path:
    """Where a model's calibration lives: ``confidence.json`` in its directory, or
    ``<name>.confidence.json`` beside a GGUF file."""
    root = Path(files.path)
    if getattr(files, "gguf_file", None):
        return root / (Path(files.gguf_file).stem + "." + CALIBRATION_FILE)
    return root / CALIBRATION_FILE


class ConfidenceVerifier(Verifier):
    """Scores nodes from their paths' token log-probs (see the module docstring)."""

    def __init__(self, calibration: Calibration | None = None, *, window: int = 8, tail: int = 32) -> None:
        self.calibration = calibration
        self.vote_power = calibration.vote_power if calibration is not None else 1.0
        self.window = calibration.window if calibration is not None else window
        self.tail = calibration.tail if calibration is not None else tail
        self.name = "confidence" if calibration is not None else "confidence-uncalibrated"
        self.n_params = 0  # nothing but arithmetic on numbers the policy already computed

    def step_features(self, node: Node) -> list[float]:
        return features(path_logprobs(node), node.logprobs, self.window, self.tail)

    def probability(self, node: Node) -> float:
        return self.from_features(self.step_features(node))

    def from_features(self, x: Sequence[float]) -> float:
        """P(correct) of a feature vector: the calibration's, else exp(mean log-prob)."""
        return math.exp(x[0]) if self.calibration is None else self.calibration.probability(x)

    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        if aggregation not in AGGREGATIONS:
            raise InvalidArgument("options.aggregation", f"unknown aggregation {aggregation!r}")
        scores = [self.probability(n) for n in nodes]
        aggs = [aggregate(n.aggregate, n.n_scored, s, aggregation) for n, s in zip(nodes, scores)]
        # A few operations per path token; no model runs, so the paper's FLOPs count is ~0.
        flops = float(sum(4 * n.prefix_tokens() for n in nodes))
        return ScoreOutput(scores=scores, aggregates=aggs, prm_tokens=0, flops=flops)


def load_confidence(spec: str, files: Any | None) -> ConfidenceVerifier:
    """``confidence`` (the calibration beside the model, uncalibrated when there is none),
    ``confidence:uncalibrated``, or ``confidence:PATH``. A calibration fitted on another model
    is InvalidArgument."""
    arg = spec.split(":", 1)[1].strip() if ":" in spec else ""
    if arg == "uncalibrated":
        return ConfidenceVerifier(None)
    if arg:
        path = Path(arg).expanduser()
    elif files is not None and calibration_path(files).exists():
        path = calibration_path(files)
    else:
        return ConfidenceVerifier(None)
    cal = Calibration.load(path)
    if files is not None:
        want = model_fingerprint(files)
        if cal.fingerprint != want:
            raise InvalidArgument(
                "verifier",
                f"confidence calibration {path} was fitted on model {cal.model!r} (fingerprint {cal.fingerprint}), "
                f"not on {getattr(files, 'name', '?')!r} (fingerprint {want}); refit it with `ponder train confidence`",
            )
    ver = ConfidenceVerifier(cal)
    ver.calibration_file = path
    return ver
