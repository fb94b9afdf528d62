"""Command line: `influence-job run` computes the diagnostic; `influence-job config` shows the configuration.

Exit codes: 0 success, 1 a validation check failed (outputs are written and say which), 2 bad input
or configuration (one paragraph naming the problem and the fix; no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from influence_job.config import dump_config, explain, load_config
from influence_job.errors import InputError

EXIT_OK, EXIT_VALIDATION, EXIT_INPUT = 0, 1, 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration (default: the built-in tiny-model run)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one field, e.g. --set curvature.source=response (repeatable; values are YAML)",
    )
    p.add_argument("--output", type=Path, help="output directory (same as --set output.dir=DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="influence-job",
        description="Gradient-similarity (RAW) and curvature-weighted (HINV) diagnostics between sampled "
        "responses of an RL-trained language model, with token influence rows.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the diagnostic and write the output directory")
    _config_args(run)
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    cfg = sub.add_parser("config", help="print the resolved configuration as YAML")
    _config_args(cfg)
    cfg.add_argument("--explain", action="store_true", help="list every field with its default and meaning")
    return parser


def _resolve(args):
    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output.dir={args.output}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s", stream=sys.stderr, force=True,
    )
    try:
        if args.command == "config":
            if args.explain:
                print("\n".join(explain()))
            else:
                print(dump_config(_resolve(args)), end="")
            return EXIT_OK
        cfg = _resolve(args)
        from influence_job.pipeline import run_job  # heavy imports only when running
        from influence_job.report import summary_lines

        result = run_job(cfg)
    except InputError as exc:
        print(f"influence-job: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print("\n".join(summary_lines(result.results, cfg.output.dir)))
    return EXIT_OK if result.results["validation"]["passed"] else EXIT_VALIDATION


if __name__ == "__main__":
    raise SystemExit(main())
