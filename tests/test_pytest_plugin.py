"""tolem's pytest plugin, used as a shop uses it: the fixture, the recorder, the example."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_postgres
from tests.support import new_invoice
from tolem.client import Card, PaymentRequest
from tolem.testing import SANDBOX_MERCHANT, Gateway, running_gateway

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "shop"
VISA = Card.parse("4405639704015096", "01/25", "815")


def _order(invoice: str, **fields: object) -> PaymentRequest:
    return PaymentRequest.model_validate(
        {"invoice_id": invoice, "amount": 100, "description": "plugin test", "name": "T", **fields}
    )


def _run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="pytest11") if e.name == "tolem"]
    assert entry.value == "tolem.pytest_plugin"


def test_the_fixture_gives_a_ready_client_and_the_sandbox_merchant(tolem_gateway: Gateway) -> None:
    assert tolem_gateway.merchant == SANDBOX_MERCHANT
    assert tolem_gateway.url.startswith("http://127.0.0.1:")
    invoice = new_invoice()
    payment = tolem_gateway.client.pay(_order(invoice), VISA)
    assert payment.status == "AUTH"
    assert tolem_gateway.client.status(invoice).id == payment.id


def test_the_recorder_receives_the_real_postlink(tolem_gateway: Gateway) -> None:
    invoice = new_invoice()
    order = _order(invoice, post_link=tolem_gateway.postlinks.url_for("orders/1"), secret_hash="s1")
    payment = tolem_gateway.client.pay(order, VISA)

    (received,) = tolem_gateway.postlinks.wait(invoice)

    assert received.path == "/orders/1"
    assert received.headers["Content-Type"].startswith("application/json")
    postlink = received.postlink
    assert (postlink.id, postlink.invoice_id, postlink.amount) == (payment.id, invoice, 100)
    assert postlink.approved and postlink.secret_hash == "s1"


def test_a_failing_shop_endpoint_gets_the_postlink_again(tolem_gateway: Gateway) -> None:
    recorder = tolem_gateway.postlinks
    recorder.status_for["/flaky"] = 500
    invoice = new_invoice()
    tolem_gateway.client.pay(_order(invoice, post_link=recorder.url_for("flaky")), VISA)

    first = recorder.wait(invoice)[0]
    recorder.status_for["/flaky"] = 200
    again = recorder.wait(invoice, count=2)[1]  # the fixture's gateway retries after 1 s

    assert again.body == first.body
    assert again.received_at - first.received_at >= 0.9


def test_wait_names_what_did_arrive_when_time_runs_out(tolem_gateway: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"0 of 1 postLink\(s\) for invoice 999000111"):
        tolem_gateway.postlinks.wait("999000111", timeout=0.3)
    assert time.monotonic() - started < 3


def test_async_and_extra_clients_talk_to_the_same_gateway(tolem_gateway: Gateway) -> None:
    import anyio

    invoice = new_invoice()
    with tolem_gateway.new_client(retries=0) as client:
        client.pay(_order(invoice), VISA)

    async def status() -> str:
        async with tolem_gateway.async_client() as client:
            return (await client.status(invoice)).status

    assert anyio.run(status) == "AUTH"


def test_the_gateway_ignores_the_callers_tolem_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A developer's shell may hold production settings; the test gateway must not see them.
    monkeypatch.setenv("TOLEM_MODE", "production")
    monkeypatch.setenv("TOLEM_POSTLINK_WORKER", "false")
    with running_gateway(tmp_path / "gw") as gateway:
        invoice = new_invoice()
        gateway.client.pay(_order(invoice, post_link=gateway.postlinks.url), VISA)
        assert gateway.postlinks.wait_for(invoice).approved
        url = gateway.url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/public.rsa", timeout=2)  # stopped with the context


def test_a_gateway_that_cannot_start_says_why(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="tolem serve exited"),
        running_gateway(tmp_path / "gw", env={"TOLEM_MODE": "nonsense"}),
    ):
        pass


def test_the_example_shop_suite_passes_on_sqlite() -> None:
    result = _run_example()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_example_shop_suite_passes_on_postgresql() -> None:
    with fresh_postgres("tolem_plugin") as url:
        result = _run_example("--tolem-database-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_a_failing_shop_test_fails(tmp_path: Path) -> None:
    # The fixture must not make a broken shop look good: a wrong expectation fails.
    test = tmp_path / "test_wrong.py"
    test.write_text(
        "from tolem.client import Card, PaymentRequest\n"
        "def test_wrong(tolem_gateway):\n"
        "    order = PaymentRequest(invoice_id='123456789012', amount=100, name='T',\n"
        "                           description='wrong')\n"
        "    card = Card.parse('5578342710750560', '09/20', '254')\n"
        "    tolem_gateway.client.pay(order, card)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "InsufficientFunds" in result.stdout
