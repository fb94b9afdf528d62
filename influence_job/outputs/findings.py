"""Sentences computed from a run's numbers (report.html's "At a glance", report.md's too): which category is
most aligned under RAW and under HINV, how H⁻¹ weighting changes it, whether similarity survives across
prompts, where in the model it lives, which tokens carry it. No canned text: each sentence is chosen and
filled from the numbers it states."""

from __future__ import annotations

import math

import numpy as np

from influence_job.outputs.number_format import fmt, fmt_percent
from influence_job.outputs.results import Categories, ModuleRecord, Results, ScoreSummary


def per_prompt_cos(results: Results, method: str) -> dict[str, float | None]:
    cells = results.similarity.methods()[method].per_prompt.cells()
    return {c: cell.cos.mean for c, cell in cells.items()}


def scope_mean_cos(scope: Categories) -> float | None:
    """Mean cosine over all pairs of a scope (the categories' means weighted by their pair counts)."""
    cells = [c for c in scope.cells().values() if c.n]
    n = sum(c.n for c in cells)
    return sum(c.n * c.cos.mean for c in cells) / n if n else None


def module_shares(modules: list[ModuleRecord], key) -> tuple[list, dict]:
    """Each group's (by ``key``) share of the sum of the modules' per-prompt mean dots, per method and category."""
    names = list(dict.fromkeys(key(m) for m in modules))
    out: dict[str, dict[str, list[float]]] = {}
    for method in modules[0].contribution.methods():
        out[method] = {}
        for cat in modules[0].contribution.methods()[method].pairs():
            values = [m.contribution.methods()[method].pairs()[cat] for m in modules]
            if any(v is None for v in values):
                out[method][cat] = [math.nan] * len(names)
                continue
            total = sum(values)
            sums = {n: 0.0 for n in names}
            for m, v in zip(modules, values, strict=True):
                sums[key(m)] += v
            out[method][cat] = [sums[n] / total if total else math.nan for n in names]
    return names, out


def random_weights_caveat(r: Results) -> str | None:
    """For the built-in model, whose weights are seeded random numbers: its results test the pipeline, and what the
    findings say about its tokens describes no trained model."""
    builtin = r.config.get("model", {}).get("builtin")
    if not builtin:
        return None
    return (f"the built-in model {builtin} has seeded random weights: these numbers exercise the pipeline and are "
            "not findings about a trained model (its 'most influential tokens' are noise). Set model.path to a "
            "checkpoint directory for real results.")


def findings(results: Results, rows: dict | None, tokens: list[list[str]] | None) -> list[str]:
    """Sentences computed from this run's numbers."""
    out = []
    val = results.validation
    failed = [c.name for c in val.checks if not c.passed]
    caveat = random_weights_caveat(results)
    if caveat:
        out.append(caveat[0].upper() + caveat[1:])
    out.append("Every validation check passed." if val.passed else
               f"Validation FAILED: {', '.join(failed)} — read the numbers below with that in mind.")
    raw, hinv = per_prompt_cos(results, "raw"), per_prompt_cos(results, "hinv")
    out += _contrast_findings(raw, hinv) + _order_findings(raw, hinv) + _scope_findings(results)
    out += _module_findings(results.modules)
    out += _token_findings(rows, tokens, results.influence.scores)
    return out


def _contrast_findings(raw: dict, hinv: dict) -> list[str]:
    """How accepted–rejected pairs of a prompt align under H⁻¹ against plainly, and against same-side pairs."""
    if raw["acc-rej"] is None or hinv["acc-rej"] is None:
        return []
    change = hinv["acc-rej"] - raw["acc-rej"]
    word = "less" if change < 0 else "more"
    others = [c for c in ("acc-acc", "rej-rej") if raw[c] is not None and hinv[c] is not None]
    same_way = [c for c in others if (hinv[c] - raw[c] < 0) == (change < 0)]
    along = (f", as are {' and '.join(f'{c} pairs ({fmt(raw[c])} → {fmt(hinv[c])})' for c in same_way)}"
             if same_way else "")
    out = [f"Accepted and rejected responses of the same prompt are {word} aligned under H⁻¹ (mean cosine "
           f"{fmt(hinv['acc-rej'])}) than plainly ({fmt(raw['acc-rej'])}){along}."]
    if others:
        gap_raw = raw["acc-rej"] - sum(raw[c] for c in others) / len(others)
        gap_hinv = hinv["acc-rej"] - sum(hinv[c] for c in others) / len(others)
        out.append(f"Against same-side pairs ({' and '.join(others)}), accepted–rejected pairs are "
                   f"{_relation(gap_raw)} plainly ({gap_raw:+.3f}) and {_relation(gap_hinv)} under H⁻¹ "
                   f"({gap_hinv:+.3f}): H⁻¹ weighting {_gap_change(gap_raw, gap_hinv)}.")
    return out


def _order_findings(raw: dict, hinv: dict) -> list[str]:
    """Which category is most and least aligned, and whether H⁻¹ weighting reorders them."""
    out = []
    for name, cos in (("Plainly (RAW)", raw), ("Under H⁻¹ (HINV)", hinv)):
        ranked = sorted((c for c in cos if cos[c] is not None), key=lambda c: -cos[c])
        if ranked:
            out.append(f"{name}, same-prompt pairs are most aligned for {ranked[0]} ({fmt(cos[ranked[0]])})"
                       + (f" and least for {ranked[-1]} ({fmt(cos[ranked[-1]])})." if len(ranked) > 1 else "."))
    r_rank = sorted((c for c in raw if raw[c] is not None), key=lambda c: -raw[c])
    h_rank = sorted((c for c in hinv if hinv[c] is not None), key=lambda c: -hinv[c])
    if r_rank and h_rank:
        out.append("H⁻¹ weighting keeps the order of the categories." if r_rank == h_rank else
                   f"H⁻¹ weighting changes the order of the categories: {' > '.join(r_rank)} plainly, "
                   f"{' > '.join(h_rank)} under H⁻¹.")
    return out


def _scope_findings(results: Results) -> list[str]:
    """Whether similarity within a prompt persists between different prompts' responses."""
    out = []
    for method, stats in results.similarity.methods().items():
        name = method.upper()
        per, cross = scope_mean_cos(stats.per_prompt), scope_mean_cos(stats.cross_prompt)
        if per is None or cross is None:
            continue
        ratio = cross / per if per else math.nan
        if abs(cross) < 0.1 or ratio < 0.25:
            verdict = "nearly vanishes across prompts"
        elif ratio < 0.75:
            verdict = "is weaker across prompts"
        else:
            verdict = "persists across prompts"
        out.append(f"Under {name}, similarity {verdict}: mean cosine {fmt(cross)} between different prompts' "
                   f"responses against {fmt(per)} within a prompt.")
    return out


def _module_findings(modules: list[ModuleRecord]) -> list[str]:
    """Which module kind and which layer contribute most of the acc-acc per-prompt dot."""
    if not modules or not all(m.contribution for m in modules):
        return []
    out = []
    for method, name in (("hinv", "HINV"), ("raw", "RAW")):
        kinds, by_kind = module_shares(modules, lambda m: m.kind)
        layers, by_layer = module_shares(modules, lambda m: m.layer)
        shares_k, shares_l = by_kind[method]["acc-acc"], by_layer[method]["acc-acc"]
        if all(math.isfinite(s) for s in shares_k + shares_l):
            k, ly = int(np.argmax(shares_k)), int(np.argmax(shares_l))
            out.append(f"Of the {name} acc-acc per-prompt dot, module kind {kinds[k]} contributes the most "
                       f"({fmt_percent(shares_k[k])}), and layer {layers[ly]} the most of any layer "
                       f"({fmt_percent(shares_l[ly])}).")
    return out


def _relation(gap: float) -> str:
    return "more aligned" if gap > 0 else "less aligned" if gap < 0 else "as aligned"


def _gap_change(before: float, after: float) -> str:
    """How H⁻¹ weighting moves the acc-rej gap to same-side pairs."""
    if before * after < 0:
        return "reverses the gap's sign"
    if abs(after) < abs(before):
        return "narrows the gap"
    return "widens the gap" if abs(after) > abs(before) else "leaves the gap as it is"


def _token_findings(rows: dict | None, tokens: list[list[str]] | None, summary: ScoreSummary | None) -> list[str]:
    if rows is None:  # report.md: from results.json's score summary
        if not summary:
            return []
        mx, mn = summary.max, summary.min
        return [f"The most positive token score is {fmt(mx.score)} (response {mx.response_id}, token "
                f"{mx.position}); the most negative {fmt(mn.score)} (response {mn.response_id}, token "
                f"{mn.position}); {fmt_percent(summary.positive_share)} of the {summary.tokens:,} scored "
                "tokens are positive."]
    scores = np.asarray(rows["scores"], dtype=float)
    ok = np.isfinite(scores)
    if not ok.any():
        return ["No token influence scores: every prompt lacks an accepted/rejected contrast (or influence is off)."]
    where = np.flatnonzero(ok)
    hi, lo = where[np.argmax(scores[ok])], where[np.argmin(scores[ok])]
    mass = np.sort(np.abs(scores[ok]))[::-1]
    top = max(1, int(math.ceil(0.01 * mass.size)))
    share = mass[:top].sum() / mass.sum() if mass.sum() else math.nan
    return [f"The most positive token is {_token_name(rows, tokens, hi)} (score {fmt(float(scores[hi]))}); the "
            f"most negative {_token_name(rows, tokens, lo)} ({fmt(float(scores[lo]))}). The top 1 % of tokens by "
            f"|score| ({top} of {mass.size}) carry {fmt_percent(share)} of the total |score|."]


def locate_token(rows: dict, flat: int) -> tuple[int, int]:
    r = int(np.searchsorted(rows["token_offsets"], flat, side="right") - 1)
    return r, flat - int(rows["token_offsets"][r])


def _token_name(rows, tokens, flat: int) -> str:
    r, k = locate_token(rows, flat)
    text = tokens[r][k] if tokens is not None else f"#{int(rows['token_ids'][flat])}"
    return f"“{text}” in response {rows['response_id'][r]}"
