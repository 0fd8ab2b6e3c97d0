"""Keep the README true to the code: settings, test cards and the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from tolem.config import Settings
from tolem.processor.cards import PUBLISHED

README = Path(__file__).resolve().parent.parent / "README.md"

# A table row whose first cell is a backticked TOLEM_ variable: | `TOLEM_PORT` | ...
_SETTING_ROW = re.compile(r"^\|\s*`TOLEM_([A-Z0-9_]+)`\s*\|", re.MULTILINE)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_settings_table_has_one_row_per_field() -> None:
    rows = [name.lower() for name in _SETTING_ROW.findall(_readme())]
    duplicates = sorted({name for name in rows if rows.count(name) > 1})
    assert not duplicates, f"settings listed more than once: {duplicates}"
    assert sorted(rows) == sorted(Settings.model_fields)


def test_every_published_card_is_in_the_readme() -> None:
    text = _readme()
    missing = sorted({card.pan for card in PUBLISHED if card.pan not in text})
    assert not missing, f"published test cards missing from README.md: {missing}"


def test_the_two_commands_are_in_a_code_block() -> None:
    lines = {line.strip() for block in _FENCE.findall(_readme()) for line in block.splitlines()}
    assert "./dev serve" in lines
    assert "./dev test" in lines
