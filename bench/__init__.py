"""Benchmarks, runnable per area: `python -m bench core [--quick]`, `python -m bench all`.

Each area prints one `name=value unit` line per figure on stdout; progress goes to stderr.
Figures and the machine they were taken on are recorded in docs/PERFORMANCE.md.
"""
