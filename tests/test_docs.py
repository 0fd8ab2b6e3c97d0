"""Keep the README true to the code: settings, test cards, the two commands, the SDK."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import Gateway
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


def _sdk_walkthrough() -> tuple[str, str]:
    """The README's SDK walkthrough: its Python block and the output block after it."""
    text = _readme().split("<!-- sdk-walkthrough -->", 1)[1]
    code, output = _FENCE.findall(text)[:2]
    return code, output


def test_the_sdk_walkthrough_runs_and_prints_what_the_readme_shows(
    gateway: Gateway, tmp_path: Path
) -> None:
    code, output = _sdk_walkthrough()
    assert "http://127.0.0.1:8000" in code
    script = tmp_path / "walkthrough.py"
    script.write_text(code.replace("http://127.0.0.1:8000", gateway.base_url), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output
