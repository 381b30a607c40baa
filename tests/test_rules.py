"""The shared rule vectors pass, cover every rule of docs/rules.md, and can fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edge.decision import REASON_TEXT
from edge.rules import Reason
from edge.rules_vectors import DEFAULT_FILE, run_vector, run_vectors

DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def test_all_vectors_pass() -> None:
    failures, total = run_vectors()
    assert failures == []
    assert total >= 50


def test_every_rule_in_the_table_has_vectors() -> None:
    rules_in_doc = set(re.findall(r"^\| (R\d+) \|", DOC.read_text(), flags=re.M))
    vectors = json.loads(DEFAULT_FILE.read_text())["vectors"]
    assert rules_in_doc == {v["rule"] for v in vectors}


def test_a_wrong_expectation_is_reported() -> None:
    vector = json.loads(DEFAULT_FILE.read_text())["vectors"][0]
    vector["expect"] = {"reason": "ok"}
    assert run_vector(vector) is not None


def test_every_reason_has_words_in_both_languages() -> None:
    assert set(REASON_TEXT) == set(Reason)
    assert all(zh and en for zh, en in REASON_TEXT.values())


def test_reasons_documented() -> None:
    text = DOC.read_text()
    undocumented = [r for r in Reason if f"`{r}`" not in text]
    assert undocumented == []
