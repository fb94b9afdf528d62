"""Who does what across ranks: prompts sharded whole by token count, modules owned by one rank each.

The planner and the run call the same two functions, so the plan's per-rank phases are the run's.
"""

from __future__ import annotations

import numpy as np


def shard_prompts(prompt_tokens: list[int], world: int) -> list[tuple[int, int]]:
    """Contiguous prompt ranges [start, stop), one per rank, with token totals as even as whole prompts
    allow (a rank gets none when there are fewer prompts than ranks)."""
    cum = np.concatenate([[0], np.cumsum(prompt_tokens)])
    cuts = [0]
    for r in range(1, world):
        cuts.append(max(cuts[-1], int(np.argmin(np.abs(cum - cum[-1] * r / world)))))
    cuts.append(len(prompt_tokens))
    return [(cuts[r], cuts[r + 1]) for r in range(world)]


def assign_modules(costs: list[float], world: int) -> list[int]:
    """Owner rank of each module: largest cost first, onto the rank with the least assigned cost."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner
