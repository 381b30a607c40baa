"""Printer figures (issue 3): a 40-line Chinese kitchen ticket rendered to ESC/POS bytes.

kitchen_ticket_text_ms is the p99 in Kanji text mode (target <= 20 ms); kitchen_ticket_raster_ms
the p99 with every line drawn into a 576-dot raster image with the CJK font. p50s alongside.
Rendering only: what the printer does with the bytes is not the gateway's time.
"""

from __future__ import annotations

import time

from bench.stats import percentile
from drivers.printer.job import Job, OrderLine, kitchen_ticket
from drivers.printer.profiles import PROFILES
from drivers.printer.render import render

DISHES = [
    "宫保鸡丁",
    "鱼香肉丝",
    "麻婆豆腐（微辣）",
    "回锅肉",
    "水煮鱼片",
    "清炒时蔬",
    "酸辣土豆丝",
    "红烧排骨",
    "扬州炒饭",
]


def ticket() -> Job:
    lines = [
        OrderLine(f"{DISHES[i % len(DISHES)]} ¥{28 + i}", 1 + i % 3, note="少辣，不要香菜（过敏）")
        for i in range(18)
    ]
    job = kitchen_ticket("热菜档口", "A12", "20260501-0042", lines, time="12:30")
    assert sum(1 for _ in job.text_lines) + 2 == 40  # 36 dish/note lines, 2 header, 2 dividers
    return job


def _samples(job: Job, chinese: str, n: int) -> list[float]:
    profile = PROFILES["xp-80"]
    render(job, profile, chinese=chinese)  # warm: font lookup and load, python-escpos profile
    out = []
    for _ in range(n):
        t = time.perf_counter()
        render(job, profile, chinese=chinese)
        out.append((time.perf_counter() - t) * 1000)
    return out


def figures(quick: bool) -> list[tuple[str, float, str]]:
    job = ticket()
    text = _samples(job, "kanji", 50 if quick else 1000)
    raster = _samples(job, "raster", 10 if quick else 200)
    return [
        ("kitchen_ticket_text_ms", percentile(text, 99), "ms"),
        ("kitchen_ticket_text_p50_ms", percentile(text, 50), "ms"),
        ("kitchen_ticket_raster_ms", percentile(raster, 99), "ms"),
        ("kitchen_ticket_raster_p50_ms", percentile(raster, 50), "ms"),
    ]


if __name__ == "__main__":
    for name, value, unit in figures(quick=False):
        print(f"{name}={value:.3f} {unit}")
