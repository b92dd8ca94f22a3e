"""The one validated form of a request. The CLI, the gRPC request and the Python API all build a
:class:`SolveConfig`; the scheduler validates it against the server's :class:`Limits`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ponder.proto.errors import InvalidArgument

if TYPE_CHECKING:  # the generated code is imported when used (generate.py runs before it exists)
    from ponder.proto import pb

STRATEGIES = ("best_of_n", "beam", "lookahead", "dvts", "revision", "hybrid", "auto")
AGGREGATIONS = ("last", "min", "prod", "mean")
SELECTIONS = ("majority", "best", "weighted")
# Strategies whose budget a live controller can steer: they sample whole solutions in waves.
ADAPTIVE_STRATEGIES = ("auto", "best_of_n")
BUDGET_MODES = ("fixed", "adaptive")
DEFAULT_STRATEGY = "best_of_n"
DEFAULT_GENERATIONS = 4
DEFAULT_TEMPERATURE = 0.8
DEFAULT_AGGREGATION = "last"
# --verifier, as every command that builds a verifier takes it
VERIFIER_HELP = (
    "'auto' (the model's own: for arith the likelihood verifier with arith-large as judge, else the "
    "policy's calibrated confidence; the default), 'none', confidence[:PATH], likelihood:JUDGE[:PATH], "
    "a value-head .safetensors, a PRM directory, outcome:DIR or random[:SEED]"
)
DEFAULT_MAX_STEPS = 40  # steps of a solution, rounds of beam search
DEFAULT_MAX_STEP_TOKENS = 256  # tokens of one step
# Where a step ends, unless the model's ponder.json says otherwise: a blank line.
DEFAULT_STEP_DELIMITER = "\n\n"
# An adaptive budget may grow to this multiple of its nominal generations (drawn from what
# settled questions of the same batch did not spend) unless the request sets max_generations.
DEFAULT_MAX_BUDGET_FACTOR = 4


@dataclass(frozen=True)
class Limits:
    """What a server accepts. Requests outside these bounds get INVALID_ARGUMENT."""

    max_question_chars: int = 8000
    max_generations: int = 256
    max_steps: int = 64
    max_step_tokens: int = 1024
    max_beam_width: int = 64
    max_lookahead: int = 8
    max_timeout_s: float = 3600.0


def _option(default: Any, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None) -> Any:
    """A request option: its default, its help, its choices and (where it differs from the
    field's name) its command-line flag; the CLI, ``ponder eval`` and the docs read them."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass(frozen=True)
class SolveConfig:
    """A question and how to search it: the one source of every request default. ``None``
    means "the strategy's own choice" (e.g. the beam width), said in the field's help."""

    question: str
    strategy: str = _option(DEFAULT_STRATEGY, "the search strategy", STRATEGIES)
    generations: int = _option(DEFAULT_GENERATIONS, "N, the budget in generations (adaptive: the average)",
                               flag="budget")
    max_tokens: int = _option(0, "token cap per question (0: none)")
    max_flops: float = _option(0.0, "FLOP cap per question (0: none)")
    budget_mode: str | None = _option(
        None, "adaptive: a live controller stops, abandons or widens the question; fixed: exactly N "
        "(default: adaptive for auto, fixed otherwise)", BUDGET_MODES)
    min_generations: int | None = _option(None, "adaptive: spend at least this many")
    max_generations: int | None = _option(
        None, f"adaptive: spend at most this many (default {DEFAULT_MAX_BUDGET_FACTOR} x N)")
    temperature: float = _option(DEFAULT_TEMPERATURE, "sampling temperature (0: greedy)")
    top_p: float = _option(1.0, "nucleus sampling: keep the top tokens holding this much probability")
    top_k: int = _option(0, "sample from the k likeliest tokens (0: all)")
    beam_width: int | None = _option(None, "M, children per kept parent (default 4)")
    lookahead: int | None = _option(None, "k, greedy rollout steps of lookahead (default 2)")
    max_steps: int = _option(DEFAULT_MAX_STEPS, "steps per solution, rounds of beam search")
    max_step_tokens: int = _option(DEFAULT_MAX_STEP_TOKENS, "tokens per step")
    seed: int | None = _option(None, "sampling seed: same seed, same answer (default: random)")
    aggregation: str = _option(DEFAULT_AGGREGATION, "how step scores fold into a path score", AGGREGATIONS)
    selection: str | None = _option(
        None, "how the answer is picked across candidates (default: weighted with a verifier, else majority)",
        SELECTIONS)
    sequential_ratio: float | None = _option(None, "hybrid: share of the budget spent on revisions (default 0.5)")
    request_id: str = _option("", "idempotency key: the same key returns the same job for a day")
    priority: int = _option(0, "queue priority: > 0 high, < 0 low, 0 normal")
    model: str = _option("", "ask for a specific model (default: the worker's)")
    timeout_s: float = _option(0.0, "wall-clock limit in seconds from submission (0: none); a job past it "
                                    "fails with DEADLINE_EXCEEDED")

    def validate(self, limits: Limits = Limits()) -> SolveConfig:
        """Raise :class:`InvalidArgument` naming the first bad field; return self."""
        q = self.question
        if not isinstance(q, str) or not q.strip():
            raise InvalidArgument("question", "must not be empty")
        if len(q) > limits.max_question_chars:
            raise InvalidArgument(
                "question", f"has {len(q)} characters; the limit is {limits.max_question_chars}"
            )
        if self.strategy not in STRATEGIES:
            raise InvalidArgument(
                "strategy", f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}"
            )
        _int_range("budget.generations", self.generations, 1, limits.max_generations)
        self._validate_budget(limits)
        if self.max_tokens < 0:
            raise InvalidArgument("budget.max_tokens", f"must be >= 0, got {self.max_tokens}")
        if not self.max_flops >= 0:
            raise InvalidArgument("budget.max_flops", f"must be >= 0, got {self.max_flops}")
        _float_range("options.temperature", self.temperature, 0.0, 2.0)
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument("options.top_p", f"must be in (0, 1], got {self.top_p}")
        _int_range("options.top_k", self.top_k, 0, 100_000)
        if self.beam_width is not None:
            _int_range("options.beam_width", self.beam_width, 1, limits.max_beam_width)
            if self.strategy in ("beam", "lookahead", "dvts") and self.beam_width > self.generations:
                raise InvalidArgument(
                    "options.beam_width",
                    f"beam width {self.beam_width} exceeds the budget of {self.generations} generations",
                )
        if self.lookahead is not None:
            _int_range("options.lookahead", self.lookahead, 0, limits.max_lookahead)
        _int_range("options.max_steps", self.max_steps, 1, limits.max_steps)
        _int_range("options.max_step_tokens", self.max_step_tokens, 1, limits.max_step_tokens)
        if self.seed is not None:
            _int_range("options.seed", self.seed, 0, 2**63 - 1)
        if self.aggregation not in AGGREGATIONS:
            raise InvalidArgument(
                "options.aggregation",
                f"unknown aggregation {self.aggregation!r}; expected one of {', '.join(AGGREGATIONS)}",
            )
        if self.selection is not None and self.selection not in SELECTIONS:
            raise InvalidArgument(
                "options.selection",
                f"unknown selection {self.selection!r}; expected one of {', '.join(SELECTIONS)}",
            )
        if self.sequential_ratio is not None:
            _float_range("options.sequential_ratio", self.sequential_ratio, 0.0, 1.0)
        if len(self.request_id) > 200:
            raise InvalidArgument("request_id", "must be at most 200 characters")
        _int_range("priority", self.priority, -1000, 1000)
        if not 0.0 <= self.timeout_s <= limits.max_timeout_s:
            raise InvalidArgument(
                "timeout_s", f"must be in [0, {limits.max_timeout_s}], got {self.timeout_s}"
            )
        return self

    def _validate_budget(self, limits: Limits) -> None:
        if self.budget_mode is not None and self.budget_mode not in BUDGET_MODES:
            raise InvalidArgument(
                "budget.mode", f"unknown budget mode {self.budget_mode!r}; expected one of {', '.join(BUDGET_MODES)}"
            )
        if self.adaptive:
            if self.strategy not in ADAPTIVE_STRATEGIES:
                raise InvalidArgument(
                    "budget.mode",
                    f"adaptive budgets apply to {' and '.join(ADAPTIVE_STRATEGIES)}; {self.strategy} spends a fixed budget",
                )
        elif self.min_generations is not None or self.max_generations is not None:
            field_ = "budget.min_generations" if self.min_generations is not None else "budget.max_generations"
            raise InvalidArgument(field_, "bounds apply to adaptive budgets; this request's budget is fixed")
        if self.min_generations is not None:
            _int_range("budget.min_generations", self.min_generations, 1, self.generations)
        if self.max_generations is not None:
            _int_range("budget.max_generations", self.max_generations, 1, limits.max_generations)
            if self.max_generations < self.generations:
                raise InvalidArgument(
                    "budget.max_generations",
                    f"{self.max_generations} is below the budget of {self.generations} generations",
                )
            if self.min_generations is not None and self.max_generations < self.min_generations:
                raise InvalidArgument(
                    "budget.max_generations",
                    f"{self.max_generations} is below min_generations {self.min_generations}",
                )

    @property
    def adaptive(self) -> bool:
        """Whether a live controller may stop, abandon or widen this question's budget."""
        if self.budget_mode is None:
            return self.strategy == "auto"
        return self.budget_mode == "adaptive"

    def budget_bounds(self, limits: Limits = Limits(), min_default: int = 1) -> tuple[int, int]:
        """(min, max) generations of an adaptive budget; (N, N) for a fixed one."""
        n = self.generations
        if not self.adaptive:
            return n, n
        lo = self.min_generations if self.min_generations is not None else min(n, min_default)
        hi = self.max_generations
        if hi is None:
            hi = max(n, min(limits.max_generations, DEFAULT_MAX_BUDGET_FACTOR * n))
        return lo, hi

    def replace(self, **changes: Any) -> SolveConfig:
        return dataclasses.replace(self, **changes)

    # -- wire form --------------------------------------------------------------------------

    @classmethod
    def from_proto(cls, req: pb.SolveRequest) -> SolveConfig:
        """Build from a ``ponder.v1.SolveRequest``; unset optional fields keep defaults."""
        b, o = req.budget, req.options
        return cls(
            question=req.question,
            strategy=req.strategy or DEFAULT_STRATEGY,
            generations=b.generations if b.HasField("generations") else DEFAULT_GENERATIONS,
            max_tokens=b.max_tokens if b.HasField("max_tokens") else 0,
            max_flops=b.max_flops if b.HasField("max_flops") else 0.0,
            budget_mode=b.mode or None,
            min_generations=b.min_generations if b.HasField("min_generations") else None,
            max_generations=b.max_generations if b.HasField("max_generations") else None,
            temperature=_f32(o.temperature) if o.HasField("temperature") else DEFAULT_TEMPERATURE,
            top_p=_f32(o.top_p) if o.HasField("top_p") else 1.0,
            top_k=o.top_k if o.HasField("top_k") else 0,
            beam_width=o.beam_width if o.HasField("beam_width") else None,
            lookahead=o.lookahead if o.HasField("lookahead") else None,
            max_steps=o.max_steps if o.HasField("max_steps") else DEFAULT_MAX_STEPS,
            max_step_tokens=o.max_step_tokens if o.HasField("max_step_tokens") else DEFAULT_MAX_STEP_TOKENS,
            seed=o.seed if o.HasField("seed") else None,
            aggregation=o.aggregation or DEFAULT_AGGREGATION,
            selection=o.selection or None,
            sequential_ratio=_f32(o.sequential_ratio) if o.HasField("sequential_ratio") else None,
            request_id=req.request_id,
            priority=req.priority,
            model=req.model,
            timeout_s=req.timeout_s,
        )

    def to_proto(self) -> pb.SolveRequest:
        from ponder.proto import pb

        req = pb.SolveRequest(
            question=self.question,
            strategy=self.strategy,
            request_id=self.request_id,
            priority=self.priority,
            model=self.model,
            timeout_s=self.timeout_s,
        )
        req.budget.generations = self.generations
        if self.max_tokens:
            req.budget.max_tokens = self.max_tokens
        if self.max_flops:
            req.budget.max_flops = self.max_flops
        if self.budget_mode:
            req.budget.mode = self.budget_mode
        if self.min_generations is not None:
            req.budget.min_generations = self.min_generations
        if self.max_generations is not None:
            req.budget.max_generations = self.max_generations
        o = req.options
        o.temperature = self.temperature
        o.top_p = self.top_p
        o.top_k = self.top_k
        for name in ("beam_width", "lookahead", "max_steps", "max_step_tokens", "seed", "sequential_ratio"):
            value = getattr(self, name)
            if value is not None:
                setattr(o, name, value)
        o.aggregation = self.aggregation
        if self.selection:
            o.selection = self.selection
        return req


# -- the command line and the docs, from the fields ------------------------------------------

# Fields that are not options of a request (the question is the positional argument).
NOT_OPTIONS = frozenset({"question"})


def option_fields(exclude: frozenset[str] | set[str] = frozenset()) -> list[dataclasses.Field[Any]]:
    """SolveConfig's option fields in declaration order, less ``exclude``."""
    return [f for f in dataclasses.fields(SolveConfig) if f.name not in NOT_OPTIONS | set(exclude)]


def option_flag(f: dataclasses.Field[Any]) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def _option_type(f: dataclasses.Field[Any]) -> type:
    hint = typing.get_type_hints(SolveConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind: type = args[0] if args else hint
    if kind not in (int, float, str):
        raise TypeError(f"SolveConfig.{f.name}: no flag for type {kind}")
    return kind


def add_option_flags(parser: Any, exclude: frozenset[str] | set[str] = frozenset()) -> None:
    """One flag per option of a request (``parser``: an argparse parser or argument group), its
    type, default, choices and help taken from the field; ``dest`` is the field's name."""
    for f in option_fields(exclude):
        help_ = f.metadata.get("help", "")
        if f.default not in (None, ""):
            help_ = f"{help_} (default: {f.default})"
        metavar = f.metadata["flag"].upper() if f.metadata.get("flag") else None
        parser.add_argument(option_flag(f), dest=f.name, type=_option_type(f), default=f.default,
                            choices=f.metadata.get("choices"), help=help_, metavar=metavar)


def options_from_args(args: argparse.Namespace, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The options :func:`add_option_flags` added, read back by field name."""
    return {f.name: getattr(args, f.name) for f in option_fields(exclude)}


def option_table() -> str:
    """The docs' table of request options (README.md "Options"), one row per field."""
    rows = ["| option | flag | default | what |", "|---|---|---|---|"]
    for f in option_fields():
        choices = f.metadata.get("choices")
        what = f.metadata.get("help", "") + (" (" + " \\| ".join(choices) + ")" if choices else "")
        default = "—" if f.default is None else f"`{f.default!r}`"
        rows.append(f"| `{f.name}` | `{option_flag(f)}` | {default} | {what} |")
    return "\n".join(rows)


def _f32(x: float) -> float:
    """Undo float32 widening on the wire (0.6 arrives as 0.6000000238): 7 significant digits."""
    return float(f"{x:.7g}")


def _int_range(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidArgument(name, f"must be in [{lo}, {hi}], got {value}")


def _float_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(name, f"must be a number, got {value!r}")
    if not lo <= value <= hi:  # also rejects NaN
        raise InvalidArgument(name, f"must be in [{lo}, {hi}], got {value}")
