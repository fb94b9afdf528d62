"""A module's work as a list of factorisations: the one description the engine runs and the planner prices.

The curvature scope and whether token scores are wanted decide which factorisations a module needs: one over the
whole batch (scope global), and one per prompt (scope per_prompt, or for the token scores, whose solves are per
prompt whatever the scope). Each has a size (its curvature rows), a number of right-hand sides and whether a
quadratic form G H⁻¹ Gᵀ is formed; those three decide its route and its cost, so the engine and the planner must
read them from here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Factorisation:
    """One factorisation of a module's curvature, over a contiguous range of its rows and responses."""

    rows: tuple[int, int]  # curvature rows [start, stop): token rows (source token) or responses (source response)
    responses: tuple[int, int]  # responses [start, stop) whose rows these are
    n_rhs: int  # right-hand sides solved against it
    quad: bool  # whether it forms the quadratic form G H⁻¹ Gᵀ (the HINV contribution), else only solves
    prompt: int | None  # the prompt it belongs to; None for the whole batch
    scores: bool  # whether its solves give the token scores of its prompt's responses

    @property
    def size(self) -> int:
        return self.rows[1] - self.rows[0]


@dataclass(frozen=True)
class Executed:
    """One factorisation as it runs (the engine) or would run (the planner): its size, right-hand sides, whether
    it forms a quadratic form, and the route chosen for it."""

    size: int
    n_rhs: int
    quad: bool
    route: str


def module_schedule(prompt_bounds: Sequence[tuple[int, int]], row_offsets: Sequence[int], scope: str,
                    token_scores: bool) -> list[Factorisation]:
    """The factorisations of one module, in the order the engine runs them.

    ``prompt_bounds``: each prompt's responses [start, stop); ``row_offsets`` (N+1): response r's curvature rows
    are [row_offsets[r], row_offsets[r+1]); ``scope``: curvature.scope; ``token_scores``: influence.enabled.
    The global factorisation forms G H⁻¹ Gᵀ for all N responses; a per-prompt one forms it against all N (scope
    per_prompt: H_p⁻¹ weighs every pair that touches prompt p) or only solves its own responses (token scores).
    """
    n = prompt_bounds[-1][1] if prompt_bounds else 0
    out = []
    if scope == "global":
        out.append(Factorisation((0, int(row_offsets[n])), (0, n), n_rhs=n, quad=True, prompt=None, scores=False))
    if scope == "per_prompt" or token_scores:
        per_prompt = scope == "per_prompt"
        for p, (s, e) in enumerate(prompt_bounds):
            out.append(Factorisation((int(row_offsets[s]), int(row_offsets[e])), (s, e),
                                     n_rhs=n if per_prompt else e - s, quad=per_prompt, prompt=p,
                                     scores=token_scores))
    return out


def mixed_label(values: Sequence[str]) -> str:
    """One label for what a module's factorisations took (a route, a Gram dtype): the value, or ``mixed(a,b)``."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "mixed(" + ",".join(distinct) + ")"
