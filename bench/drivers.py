"""Area `drivers` (issue 3): device drivers against their simulators.

Each device class contributes `bench/drivers_<class>.py` with `figures(quick) -> [(name, value,
unit)]`; this area runs them in turn and prints one `name=value unit` line per figure.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.stats import Figures, progress

CLASSES = ("locker", "gate", "printer", "scanner")


def run(quick: bool, workdir: Path | None = None, keep: bool = False) -> Figures:
    figures = Figures()
    for name in CLASSES:
        progress(f"drivers: {name}")
        module = importlib.import_module(f"bench.drivers_{name}")
        for fig_name, value, unit in module.figures(quick):
            digits = 0 if unit in ("count", "1/s") else 3
            figures.add(fig_name, value, unit, digits)
    return figures
