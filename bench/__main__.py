"""`python -m bench AREA [--quick]`: run benchmark areas; `all` runs every area."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench import core, daemon, drivers, kiosk, sync
from bench.stats import Figures, check_targets, progress

AREAS: dict[str, Callable[[bool, Path | None, bool], Figures]] = {
    "core": core.run,
    "drivers": drivers.run,
    "daemon": daemon.run,
    "sync": sync.run,
    "kiosk": kiosk.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("area", choices=[*AREAS, "all"], help="benchmark area, or all of them")
    parser.add_argument("--quick", action="store_true", help="small sizes; runs in seconds")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to make the temporary work directory (default: system temp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a figure misses the issue's target",
    )
    args = parser.parse_args(argv)
    missed = 0
    for name in AREAS if args.area == "all" else [args.area]:
        figures = AREAS[name](args.quick, args.workdir, args.keep)
        if not args.quick:
            missed += check_targets(figures)
        else:
            progress("quick run: sizes are small, targets not checked")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
