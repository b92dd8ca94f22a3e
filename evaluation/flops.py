"""``ponder flops``: the test-time budget that costs as much as a larger model (Snell et al. §7).

The exchange of pretraining for test-time compute compares a small model that samples more
with a model M times larger (P_large = M · P_small) that samples once, at equal *total* FLOPs.
With the paper's accounting (pretraining 6·P·D_pretrain, inference 2·P·D_inference):

    6·P·D_pre + 2·P·D_inf·X  =  6·M·P·D_pre + 2·M·P·D_inf
    X = M + 3·(M − 1) / R,       R = D_inf / D_pre

X is the number of generations the small model may spend per generation of the large one, and R
says how much inference the deployment will do over the model's lifetime relative to its
pretraining tokens: R ≪ 1 (a model trained once, asked rarely) lets the small model sample far
more; R ≫ 1 (heavy traffic) leaves it only X → M. This is the total-FLOPs matching, which is
the one that answers "which would have been cheaper to build and run". Matching inference FLOPs
only (X = M, the pretraining cost ignored) is printed beside it for comparison.

    ponder flops --small arith --large /path/to/bigger-arith --ratios 0.16,1,22
    ponder flops --small-params 3.4e6 --large-params 27e6 --ratios 0.1,1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ponder.proto.errors import InvalidArgument

DEFAULT_RATIOS = (0.16, 1.0, 22.0)  # example values from R << 1 to R >> 1


def matched_generations(m: float, r: float) -> float:
    """X = M + 3(M − 1)/R: the small model's generations per large-model generation."""
    if m <= 0 or r <= 0:
        raise InvalidArgument("ratios" if r <= 0 else "large", "the size ratio M and R must be positive")
    return m + 3.0 * (m - 1.0) / r


def model_params(name: str) -> tuple[int, int | None]:
    """(non-embedding parameters, pretraining tokens when the model records them)."""
    from ponder.workers.models import load_hf_model, non_embedding_params, resolve

    files = resolve(name)
    params = non_embedding_params(load_hf_model(files))
    tokens = None
    record = Path(files.path) / "train.json"
    if record.exists():
        tokens = json.loads(record.read_text()).get("train", {}).get("tokens")
    return params, int(tokens) if tokens else None


def parse_ratios(text: str) -> list[float]:
    """``--ratios``: comma-separated positive, finite R values; InvalidArgument otherwise."""
    try:
        ratios = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        ratios = []
    if not ratios or any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise InvalidArgument("ratios", f"positive numbers, got {text!r}")
    return ratios


def table(p_small: float, p_large: float, ratios: list[float]) -> list[dict[str, Any]]:
    m = p_large / p_small
    return [{"R": r, "M": m, "generations_total_flops": matched_generations(m, r), "generations_inference_only": m}
            for r in ratios]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ponder flops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", default="", help="the small model (its parameters are counted)")
    ap.add_argument("--large", default="", help="the larger model")
    ap.add_argument("--small-params", type=float, default=0.0, help="or: non-embedding parameters of the small model")
    ap.add_argument("--large-params", type=float, default=0.0, help="or: of the larger model")
    ap.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="R = D_inference / D_pretrain values")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        ratios = parse_ratios(a.ratios)
        p_small = a.small_params or (model_params(a.small)[0] if a.small else 0)
        p_large = a.large_params or (model_params(a.large)[0] if a.large else 0)
        if p_small <= 0 or p_large <= 0:
            raise InvalidArgument("small" if p_small <= 0 else "large", "name a model or give its parameter count")
        rows = table(p_small, p_large, ratios)
    except InvalidArgument as exc:
        print(f"ponder flops: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    if not a.json:
        print(f"P_small = {p_small:.3g}, P_large = {p_large:.3g}, M = {p_large / p_small:.2f}")
        print("     R   generations (total FLOPs)   generations (inference only)")
        for row in rows:
            print(f"{row['R']:6g}   {row['generations_total_flops']:25.1f}   {row['generations_inference_only']:28.1f}")
    print(json.dumps({"p_small": p_small, "p_large": p_large, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
