"""How numbers are written in report.md, report.html and the terminal summary — one set of rules for all.

- A column of a table uses one notation for all its numbers: fixed-point when every non-zero value lies in
  [1e-3, 1e5), with enough decimals for 4 significant digits of its smallest non-zero value (at most 6);
  otherwise scientific with 4 significant digits (``3.571e+04``). A single number is a column of one.
- Integers are exact with thousands separators; booleans are "yes"/"no"; a missing value is "—".
- Byte counts are binary units with 3 significant digits (``0.125 MiB``); shares are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

MISSING = "—"


def _is_real(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def column_format(values: Sequence) -> Callable[[object], str]:
    """The formatter of one column, chosen from all its values."""
    reals = [abs(x) for x in values if _is_real(x) and x != 0]
    scientific = any(x >= 1e5 or x < 1e-3 for x in reals)
    decimals = 0 if not reals else min(6, max(0, 3 - math.floor(math.log10(min(reals)))))

    def one(x) -> str:
        if x is None:
            return MISSING
        if isinstance(x, bool):
            return "yes" if x else "no"
        if isinstance(x, int):
            return f"{x:,}"
        if isinstance(x, str):
            return x
        if not math.isfinite(x):
            return str(x)
        if scientific:
            return f"{x:.3e}"
        return f"{x:.{decimals}f}"

    return one


def fmt(x) -> str:
    """One number on its own (a column of one)."""
    return column_format([x])(x)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return MISSING
    if n == 0:
        return "0 B"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size / 8 or unit == "KiB":  # 0.125 MiB reads better than 128 KiB beside MiB rows
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return MISSING
    return f"{s:.3g} s" if s < 100 else f"{s:,.0f} s"


def fmt_percent(share: float | None) -> str:
    return MISSING if share is None or not math.isfinite(share) else f"{100 * share:.1f} %"


def format_rows(rows: list[list]) -> list[list[str]]:
    """Every cell of a table as text, each column with its own formatter."""
    if not rows:
        return []
    formatters = [column_format([row[c] for row in rows]) for c in range(len(rows[0]))]
    return [[formatters[c](cell) for c, cell in enumerate(row)] for row in rows]
