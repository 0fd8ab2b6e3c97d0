"""Schemathesis against /openapi.json: every documented operation of a real ``tolem serve``
(SQLite) over real HTTP, with generated valid and invalid requests.

Every answer must be no 5xx, carry a status the schema documents for that operation,
and match the schema documented for that status (``tolem.openapi``). The bearer token
is a real one: the sandbox merchant's service token for the ePay API, the sandbox
cabinet user's (password grant) for ``POST /operations``, so the requests get past the
token check. The generation is derandomized, so a run makes the same requests (the
gateway's own ids differ). RELIABILITY.md quotes the figures this test asserts.

    PYTHONPATH=src .venv/bin/pytest tests/test_fuzz_api.py -s
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import start_gateway
from tolem import sandbox

#: Generated examples per operation and mode (valid, then invalid data).
EXAMPLES = {GenerationMode.POSITIVE: 220, GenerationMode.NEGATIVE: 220}
#: What the test must reach: requests in total, operations of /openapi.json.
MIN_REQUESTS = 5_000
OPERATIONS = 16

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def _token(url: str, **form: str) -> str:
    answer = httpx.post(
        f"{url}/oauth2/token",
        data={"client_id": sandbox.CLIENT_ID, "client_secret": sandbox.CLIENT_SECRET, **form},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


class _Tally:
    """Requests made and the statuses answered, per operation and mode."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: collections.Counter[int] = collections.Counter()


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    tally: _Tally,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        tally.requests += 1
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=CHECKS
        )
        tally.statuses[response.status_code] += 1

    fuzz()


def _describe(exc: BaseException) -> str:
    """The failure with every sub-exception (a FailureGroup, Hypothesis' FlakyFailure)."""
    lines = [f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", [])]
    for inner in getattr(exc, "exceptions", ()):
        lines.append("  " + _describe(inner).replace("\n", "\n  "))
    return "\n".join(lines)


def _unhandled(log: str) -> list[str]:
    """The log's "unhandled error" records, each with the 40 lines that follow it."""
    lines = log.splitlines()
    return [
        "\n".join(lines[i : i + 40])
        for i, line in enumerate(lines)
        if "unhandled error" in line or "Exception in ASGI application" in line
    ]


@pytest.mark.slow
# About 3 minutes on an idle 2-core machine, 5 on a busy one: the suite's 300 s would
# cut it off mid-run (and Hypothesis would report the timeout as a flaky failure).
@pytest.mark.timeout(900)
def test_every_operation_answers_as_its_schema_says(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'fuzz.db'}"
    with start_gateway(tmp_path, database) as gw:
        service = _token(
            gw.base_url,
            grant_type="client_credentials",
            scope="webapi payment",
            terminal=sandbox.TERMINAL_ID,
        )
        user = _token(
            gw.base_url,
            grant_type="password",
            username=sandbox.CABINET_EMAIL,
            password=sandbox.CABINET_PASSWORD,
            scope="",
        )
        schema = schemathesis.openapi.from_url(f"{gw.base_url}/openapi.json")
        requests_made: collections.defaultdict[str, _Tally] = collections.defaultdict(_Tally)
        failures: dict[str, str] = {}
        started = time.monotonic()
        with requests.Session() as session:
            operations = [result.ok() for result in schema.get_all_operations()]
            for operation in operations:
                token = user if operation.path == "/operations" else service
                headers = {"Authorization": f"Bearer {token}"}
                for mode in EXAMPLES:
                    label = f"{operation.label} ({mode.value})"
                    try:
                        _fuzz(operation, mode, gw.base_url, session, headers, requests_made[label])
                    except Unsatisfiable:
                        # Nothing invalid fits a plain string path parameter (or an
                        # operation without input): schemathesis generates no such case.
                        assert mode is GenerationMode.NEGATIVE, label
                    except (Exception, BaseExceptionGroup) as exc:
                        failures[label] = str(exc)
        elapsed = time.monotonic() - started

        total = sum(tally.requests for tally in requests_made.values())
        statuses = sum((tally.statuses for tally in requests_made.values()), collections.Counter())
        print(
            f"\nschemathesis: {total} requests to {len(operations)} operations in "
            f"{elapsed:.0f} s; answers by status: {dict(sorted(statuses.items()))}"
        )
        for label, tally in requests_made.items():
            print(f"  {tally.requests:5d}  {label}  {dict(sorted(tally.statuses.items()))}")
        assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
        assert len(operations) == OPERATIONS, [op.label for op in operations]
        assert total >= MIN_REQUESTS, total
        # The tokens worked: most answers got past authentication.
        assert statuses[401] < total // 4, statuses
        assert statuses[200] > 0, statuses
        # The documented example of POST /operations is sent (Hypothesis' explicit phase).
        assert requests_made["POST /operations (positive)"].statuses[200] > 0
        # An error the app did not handle, answered or not (one raised after the answer
        # started reaches the client as that answer): its traceback, not the whole log.
        assert not (errors := _unhandled(gw.log_text())), "\n\n".join(errors)
