"""A serving worker freezes start-up's heap (tolem.app._freeze_heap).

Without it, the collector's full passes went through the whole heap every few seconds
under load, stopping the event loop for 85-90 ms (BENCHMARKS.md, "Fifth round").
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from tolem.app import create_app, worker_app
from tolem.config import Settings
from tolem.db.engine import Database
from tolem.db.migrate import prepare_database


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap as it was: unfrozen before and after, logging restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    gc.unfreeze()
    yield
    gc.unfreeze()
    root.handlers[:], root.level = handlers, level


def _frozen_while_serving(app: FastAPI) -> int:
    async def run() -> int:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    return asyncio.run(run())


def test_a_serving_worker_freezes_start_ups_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    db = Database(url)
    prepare_database(db, sandbox=True)  # tolem serve does it before its workers start
    db.dispose()
    monkeypatch.setenv("TOLEM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TOLEM_DATABASE_URL", url)
    assert gc.get_freeze_count() == 0
    # The modules, the app and the schema: tens of thousands of objects.
    assert _frozen_while_serving(worker_app()) > 50_000


def test_an_app_made_for_tests_leaves_the_heap_alone(tmp_path: Path, unfrozen: None) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    assert _frozen_while_serving(app) == 0
