"""Renders the quality report (``ponder train report``) as docs/quality.md plus its PNG figures.
Every figure in the document comes from the report's result dict or from the artifacts'
training summaries (train.json, value_head.json, manifest.json); nothing is typed in by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ponder.training.vote import vote_summary

HIST_PNG = "arith_pass_rates.png"
SELECT_PNG = "arith_best_of_n.png"
REVISE_PNG = "arith_revisions.png"
SEARCH_PNG = "arith_search.png"
NOTES_MARKER = "<!-- notes: everything below this line is kept when the report is regenerated -->"


def _plots(result: dict[str, Any], docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result["policy"]["rates"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(rates, bins=[i / 16 for i in range(17)] if result["policy"]["samples"] == 16 else 20, color="#4c72b0", edgecolor="white")
    ax.axvline(0.1, color="grey", ls=":")
    ax.axvline(0.8, color="grey", ls=":")
    ax.set_xlabel("per-question pass@1 (test split)")
    ax.set_ylabel("questions")
    ax.set_title(f"arith policy: {len(rates)} test questions, mean pass@1 {result['policy']['pass_at_1']:.3f}")
    fig.tight_layout()
    fig.savefig(docs / HIST_PNG, dpi=110)
    plt.close(fig)

    curve = result["prm"]["selection"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in curve:
        if mode != "majority" and mode != "oracle" and not ("weighted" in mode and mode.endswith("(last)")):
            continue  # the figure shows the paper's selection and aggregation; the table has every one
        xs = sorted(int(n) for n in curve[mode])
        style = {"majority": "o-", "oracle": "k:"}.get(mode, "s-" if "weighted" in mode else "^--")
        ax.plot(xs, [curve[mode][n] for n in xs], style, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per question)")
    ax.set_ylabel("accuracy (test split)")
    ax.set_title("best-of-N selection")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / SELECT_PNG, dpi=110)
    plt.close(fig)

    search = result.get("search") or {}
    if search.get("table"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, group in zip(axes, ("all", "middle third")):
            for strat, style in (("best_of_n", "o-"), ("beam", "s-")):
                xs = [n for n in search["budgets"] if f"{strat} N={n}" in search["table"]]
                ax.plot(xs, [search["table"][f"{strat} N={n}"][group]["accuracy"] for n in xs], style,
                        label="weighted best-of-N" if strat == "best_of_n" else "beam search (M=4)")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("N (generations)")
            ax.set_title(f"{group} ({int(search['table'][next(iter(search['table']))][group]['questions'])} questions)")
        axes[0].set_ylabel("accuracy (test split)")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"search with the default verifier ({search['verifier']})", fontsize=10)
        fig.tight_layout()
        fig.savefig(docs / SEARCH_PNG, dpi=110)
        plt.close(fig)

    rev = result["reviser"]["pass_at_1_by_step"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(rev) + 1), rev, "o-", label="reviser's own chain, attempt k")
    served = result["reviser"].get("service_chain", {}).get("pass_at_1_by_step", [])
    if served:
        ax.plot(range(1, len(served) + 1), served, "s--", label="as a worker runs it (policy's attempt 1)")
    ax.axhline(result["reviser"]["policy_pass_at_1_same_questions"], color="grey", ls=":", label="policy pass@1")
    ax.set_xlabel("revision step")
    ax.set_ylabel("pass@1 (test split)")
    ax.set_title("sequential revisions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(docs / REVISE_PNG, dpi=110)
    plt.close(fig)


def service_chain_rows(rev: dict[str, Any]) -> list[str]:
    """The reviser table's row for the chain as a worker runs it (absent from older reports)."""
    served = rev.get("service_chain", {}).get("pass_at_1_by_step", [])
    return ["| pass@1, as a worker runs the chain | " + " | ".join(f"{v:.3f}" for v in served) + " |"] if served else []


def service_chain_notes(rev: dict[str, Any]) -> list[str]:
    served = rev.get("service_chain", {}).get("pass_at_1_by_step", [])
    if not served:
        return []
    own = rev["pass_at_1_by_step"]
    k = min(4, len(served), len(own))
    return [
        "- The reviser's own chain: every attempt, the first included, is the reviser's (the issue's and the",
        "  paper's measurement of a revision model). As a worker runs the chain (`revision`, `hybrid`; the",
        f"  search loop through the engine, verifier {rev['service_chain'].get('verifier', 'none')}), a prompt without earlier attempts goes to the policy,",
        "  so attempt 1 is the policy's and only revisions are the reviser's.",
        f"- attempt {k} − attempt 1: own chain **{own[k - 1] - own[0]:+.3f}**; as a worker runs it {served[k - 1] - served[0]:+.3f}",
    ]


def vote_row(fit: dict[str, Any]) -> dict[str, Any]:
    """The training table's row of a calibration's vote power fit (empty when none was fitted)."""
    v = fit.get("vote_power") or {}
    if not v:
        return {}
    return {"command": v.get("reproduce", v.get("command")), "load_average": v.get("load_average", "?"),
            "wall_seconds": v.get("pool_seconds", 0.0) + v.get("seconds", 0.0)}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _fmt_time(s: float | None) -> str:
    return "?" if s is None else f"{s / 60:.1f} min"


def _count_words(n: int) -> str:
    words = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")
    return words[n] if 0 <= n < len(words) else str(n)


def reviser_stages(rtrain: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """The reviser's training, a row per stage (a reviser trained further from another records
    the earlier ones in ``earlier_stages``): (name, summary, wall-time key)."""
    if not rtrain:
        return []
    stages = [*rtrain.get("earlier_stages", []), rtrain]
    if len(stages) == 1:
        return [("reviser", rtrain, "wall_seconds")]
    return [(f"reviser, stage {i} of {len(stages)}", t, "wall_seconds") for i, t in enumerate(stages, 1)]


def write_doc(result: dict[str, Any], docs: Path, art: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    _plots(result, docs)
    pol, prm, rev, cfg = result["policy"], result["prm"], result["reviser"], result["config"]
    ptrain = _read(art / "policy" / "train.json")
    htrain = _read(art / "value_head.json")
    etrain = _read(art / "value_head_exact.json")
    ctrain = _read(art / "policy" / "confidence.json").get("fit", {})
    judge = cfg.get("judge")
    ltrain = _read(art / "policy" / f"likelihood-{judge}.json").get("fit", {}) if judge else {}
    rtrain = _read(art / "reviser" / "train.json")
    L: list[str] = []
    L += ["# Quality of the built-in arith models", ""]
    L += [
        "Produced by `ponder train report` (training/report.py) from the committed artifacts under",
        f"`{art}/`; seed {cfg['seed']}, sampling temperature {cfg['temperature']}. Regenerate with that one command;",
        "figures below are measured, not typed in (all of them, as data: `quality.json` beside this page).", "",
        "## Training commands and their timings on this machine", "",
        "The machine: 2 CPU cores shared with other jobs; the load average at the end of each run is",
        "given because it changes the wall time several-fold (one torch thread per job).", "",
        "| step | command | wall time | load average (1/5/15 min) |", "|---|---|---|---|",
    ]
    for name, t, key in (("policy", ptrain, "wall_seconds"), ("PRM, MC labels (value head + PRM model)", htrain, "wall_seconds"),
                         ("PRM, exact labels (value head + PRM model)", etrain, "wall_seconds"),
                         ("confidence calibration", ctrain, "wall_seconds"),
                         (f"likelihood calibration ({judge} as judge)", ltrain, "wall_seconds"),
                         ("its vote power (pool drawn + fitted)", vote_row(ltrain), "wall_seconds"),
                         *reviser_stages(rtrain)):
        if not t:
            continue
        L.append(f"| {name} | `{t.get('command', '?')}` | {_fmt_time(t.get(key))} | {t.get('load_average', '?')} |")
    if htrain:
        L += ["", f"PRM labelling (sampling and rollouts) took {_fmt_time(htrain.get('label_seconds'))} of the PRM's time; "
              f"MC counts: {json.dumps(htrain.get('counts', {}))}."]
    if etrain:
        pm = etrain.get("prm_model", {})
        source = etrain.get("counts", {}).get("relabelled_from")
        data = (f"the Monte Carlo recipe's solutions (`{source}`) relabelled by the checker, no sampling" if source else
                f"sampling took {_fmt_time(etrain.get('label_seconds'))}; counts: {json.dumps(etrain.get('counts', {}))}")
        L += ["", f"Exact labels: {data}; "
              f"the PRM model was kept at step {pm.get('best_step', '?')} of its run by held-out within-question AUC "
              f"({pm.get('val_within_question_auc', float('nan')):.3f} on validation questions; the curve is in `prm_exact/train.json`)."]
    if ctrain:
        h = ctrain.get("heldout", {})
        L += ["", f"Confidence calibration: {ctrain.get('questions', '?')} validation questions × {ctrain.get('samples_per_question', '?')} samples; "
              f"on its {ctrain.get('heldout_questions', '?')} held-out questions within-question AUC {h.get('within_question_auc', float('nan')):.3f} "
              f"(mean log-prob alone: {ctrain.get('heldout_mean_logprob_only', {}).get('within_question_auc', float('nan')):.3f}), "
              f"Brier {h.get('brier', float('nan')):.3f}, calibration error {h.get('calibration_error', float('nan')):.3f}."]
    if ltrain:
        chosen = ltrain.get("chosen", {})
        single = ltrain.get("single_feature_within_question_auc", {})
        L += ["", f"Likelihood calibration ({judge} as judge): {ltrain.get('questions', '?')} validation questions × "
              f"{ltrain.get('samples_per_question', '?')} samples; chosen by {ltrain.get('folds', '?')}-fold cross-validated "
              f"within-question AUC: the {chosen.get('loss', '?')} fit on {' + '.join(chosen.get('features', []))} "
              f"({chosen.get('cv_within_question_auc', float('nan')):.3f}; single features: "
              + ", ".join(f"{k} {v:.3f}" for k, v in single.items()) + "); "
              + vote_summary(ltrain) + "."]
    for name, t, _ in reviser_stages(rtrain):
        L += ["", f"{name.capitalize()} data: {json.dumps(t.get('data', {}))}; sampling took {_fmt_time(t.get('sample_seconds'))}"
              + (f"; kept at step {t['chosen_step']} by its held-out score ({t['best_score']:.3f})" if "chosen_step" in t else "")
              + "."]
    L += ["", "Report run time: " + ", ".join(f"{k} {_fmt_time(v)}" for k, v in result["timings"].items()) + "."
          + (f" Rerun alone since (`ponder train report --only`): {', '.join(result['rerun'])}." if result.get("rerun") else ""),
          ""]

    L += ["## Policy: pass@1 on the test split", ""]
    L += [
        f"{pol['questions']} test questions (the evaluation mix), {pol['samples']} samples each at T={cfg['temperature']}:",
        f"mean pass@1 **{pol['pass_at_1']:.3f}**; questions with pass@1 ≥ 0.8: {pol['share_ge_0.8']:.1%},",
        f"≤ 0.1: {pol['share_le_0.1']:.1%}, in between: **{pol['share_between']:.1%}**. Samples without a parsable",
        f"answer: {pol['no_answer_rate']:.1%}.", "",
        f"![per-question pass rates]({HIST_PNG})", "",
    ]
    for knob, title in (("n_ops", "operations"), ("digits", "largest operand's digits"), ("parens", "parentheses")):
        L += [f"| {title} | " + " | ".join(pol["by"][knob]) + " |", "|---|" + "---|" * len(pol["by"][knob])]
        L += ["| pass@1 | " + " | ".join(f"{v:.3f}" for v in pol["by"][knob].values()) + " |"]
        L += ["| questions | " + " | ".join(f"{int(v)}" for v in pol["by"][knob + "_count"].values()) + " |", ""]

    L += ["## Verifiers", ""]
    has_likelihood = any(k.startswith("likelihood") for k in prm["verifiers"])
    L += [
        f"{_count_words(len(prm['verifiers']))} verifiers: the value head on the policy's hidden states and a separate PRM model (a copy of",
        "the policy fine-tuned end to end), each trained on Monte Carlo labels (MC, the paper's recipe) and",
        "on the task's exact process labels (exact: the arith checker marks every step from the first wrong",
        "one on as bad); the confidence verifier, which reads the token probabilities the policy computed",
        "while sampling (no extra forward pass), calibrated on validation questions"
        + (f"; and the likelihood verifier, {judge} rescoring the policy's tokens (one forward pass of the judge"
           " per step), calibrated on validation questions." if has_likelihood else "."), "",
        f"Held-out Monte Carlo labels: {cfg['prm_questions']} test questions × {cfg['prm_samples']} samples, "
        f"{cfg['prm_rollouts']} rollouts per step ({prm['labelled_steps']} labelled steps; for the AUC a step is",
        "positive when at least half its rollouts reach the right answer); the exact-label AUC scores the same",
        "intermediate steps against their exact labels.", "",
        "| verifier | AUC, all steps (MC) | AUC, intermediate steps (MC) | AUC, intermediate steps (exact) "
        "| AUC, answer step vs correctness | BCE vs soft MC labels | **within-question AUC (last)** | within-question AUC (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in prm["verifiers"].items():
        w = v["within_question_auc"]
        L.append(f"| {name} | {v['auc_steps']:.3f} | {v['auc_non_final_steps']:.3f} | {v.get('auc_exact_steps', float('nan')):.3f} "
                 f"| {v['auc_final_step']:.3f} | {v['bce']:.3f} | **{w['last']:.3f}** | {w['min']:.3f} |")
    noise = prm.get("label_noise") or {}
    if noise:
        L += ["", "Label noise: Monte Carlo labels (a step good when at least half its rollouts succeed) against the",
              "exact labels of the same intermediate steps.", "",
              "| MC labels | steps | agreement | exactly-good steps labelled bad | exactly-bad steps labelled good |",
              "|---|---|---|---|---|"]
        for name, n in noise.items():
            L.append(f"| {name} | {int(n['steps'])} | {n['agreement']:.3f} | {n['exact_good_labelled_bad']:.3f} "
                     f"| {n['exact_bad_labelled_good']:.3f} |")
    L += ["", "The within-question AUC is measured on the best-of-N samples below: how often a correct sample",
          "outscores a wrong sample of the same question. Selection can only beat majority voting through it."]
    L += ["", f"Best-of-N on the same {pol['questions']} questions and samples as the pass@1 above. `weighted` is the",
          "PRM-weighted vote (sum of scores per distinct answer), `weighted k=K` the same vote with each score raised",
          "to the power K first (the vote power `ponder train vote` fitted on validation questions and saved in the",
          "verifier's calibration: what the worker counts), `best` the single highest score; `(last)` scores a",
          "solution by its last step (the paper), `(min)` by its worst step.", ""]
    ns = sorted(int(n) for n in prm["selection"]["majority"])
    L += ["| selection | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for mode, row in prm["selection"].items():
        L.append(f"| {mode} | " + " | ".join(f"{row[n]:.3f}" for n in ns) + " |")
    L += ["", f"![best-of-N]({SELECT_PNG})", ""]
    for name, d in prm["weighted_minus_majority_at_max"].items():
        verdict = "beats" if d > 0 else "does **not** beat"
        L.append(f"- {name} {verdict} majority voting at N={ns[-1]} ({d:+.3f} accuracy)")
    L += [""]

    search = result.get("search") or {}
    if search.get("table"):
        groups = search["groups"]
        first = search["table"][next(iter(search["table"]))]
        L += ["## Search: beam search against weighted best-of-N", ""]
        L += [
            f"The first {search['questions']} questions of the pool above, through the real search loop (the engine",
            f"policy, the default verifier `{search['verifier']}`, T={cfg['temperature']}, weighted selection"
            + (f" (votes count score ** {search['vote_power']:g})" if search.get("vote_power", 1.0) != 1.0 else "") + ", beam width",
            "M = 4). Columns split the questions by number of operations and by thirds of their pass rate in",
            "the pool (easy = highest).", "",
            "| run | " + " | ".join(f"{g} ({int(first[g]['questions'])})" for g in groups) + " | generations | GFLOPs |",
            "|---|" + "---|" * (len(groups) + 2),
        ]
        for key, row in search["table"].items():
            L.append(f"| {key} | " + " | ".join(f"{row[g]['accuracy']:.3f}" for g in groups)
                     + f" | {row['all']['generations']:.1f} | {row['all']['flops'] / 1e9:.2f} |")
        L += ["", f"![search]({SEARCH_PNG})", ""]

    L += ["## Reviser: sequential revisions", ""]
    L += [
        f"{rev['questions']} test questions × {rev['chains']} chains of {len(rev['pass_at_1_by_step'])} attempts; attempt k sees",
        *(["the previous attempts with the verifier's score of each (at most 4), as the revision strategy passes",
           f"them; the chains run through the search loop, scored by `{rev.get('verifier')}`."]
          if rev.get("reads_scores") else
          ["the previous attempts (at most 4, newest last) through `format_prompt`, as the revision strategy passes them."]), "",
        "| revision step | " + " | ".join(str(i + 1) for i in range(len(rev["pass_at_1_by_step"]))) + " |",
        "|---|" + "---|" * len(rev["pass_at_1_by_step"]),
        "| pass@1, the reviser's own chain | " + " | ".join(f"{v:.3f}" for v in rev["pass_at_1_by_step"]) + " |",
        *service_chain_rows(rev), "",
        f"![revisions]({REVISE_PNG})", "",
        *service_chain_notes(rev),
        f"- policy pass@1 on the same questions: {rev['policy_pass_at_1_same_questions']:.3f}",
        f"- correct answers that the next revision turns wrong: **{rev['correct_turned_wrong']:.1%}** (paper: ~38%)",
        f"- wrong answers that the next revision fixes: {rev['wrong_turned_correct']:.1%}",
        f"- last attempt correct: {rev['last_attempt_accuracy']:.3f}; majority over the chain: {rev['chain_majority_accuracy']:.3f};"
        f" some attempt correct: {rev['any_attempt_correct']:.3f}", "",
    ]
    path = docs / "quality.md"
    # The hand-written discussion below the marker survives regeneration.
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else NOTES_MARKER + "\n"
    path.write_text("\n".join(L) + "\n" + notes)
    # the figures as data, beside the page they belong to (never into the artifacts: a trial
    # run with --docs elsewhere must not overwrite the committed report)
    (docs / "quality.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path
