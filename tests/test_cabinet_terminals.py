"""The cabinet's Terminals page (issue 8): each terminal's settings (flow, 3-D Secure,
currencies, allowed hosts) taking effect on the next token and payment, the host list
enforced in production mode only, and rotating the ClientSecret; on SQLite and
PostgreSQL, over real HTTP (and in Chromium for the layout)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Browser

from tests.browser import chromium, screenshot_path
from tests.cabinet_support import confirm_fields, csrf_of, log_in, new_merchant, new_user, pay_as
from tests.payform_support import params_of, payform_link, payment_object, submit
from tests.secure3d_support import VISA_3DS, Pending, confirm, pass_acs
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    Gateway,
    cryptogram,
    cryptopay,
    new_invoice,
    payment_body,
    query,
    start_gateway,
)
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD
from tolem.config import Settings
from tolem.db.engine import Database
from tolem.merchants.models import Terminal
from tolem.merchants.service import HostError, link_problem, parse_hosts
from tolem.processor.simulator import Simulator

PASSWORD = "right-pass-1"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


# --- helpers -------------------------------------------------------------------------


def acquirer(settings: Settings, db: Database) -> Simulator:
    """TOLEM_ACQUIRER of the production gateway below: its terminals are test ones, so
    this connector is never asked; production mode only insists that there is one."""
    return Simulator(db, root_key=os.urandom(32), acs_url="http://127.0.0.1/acs/pa")


def shop(gw: Gateway, name: str = "Terminal shop") -> tuple[dict[str, Any], httpx.Client]:
    """A merchant of its own (the shared sandbox merchant stays as it is) and a
    cabinet user of it, logged in."""
    creds = new_merchant(gw, name)
    email = new_user(gw, creds["clientId"], PASSWORD)
    client = gw.client()
    response = log_in(client, email, PASSWORD)
    assert response.status_code == 303, response.text
    creds["email"] = email
    return creds, client


def terminal_row(gw: Gateway, terminal_id: str) -> tuple[Any, ...]:
    rows = query(
        gw.database_url,
        "SELECT two_step, secure3d, currencies, allowed_hosts FROM terminals WHERE id = :i",
        i=terminal_id,
    )
    two_step, secure3d, currencies, hosts = rows[0]
    return bool(two_step), secure3d, currencies, hosts


def settings_form(
    flow: str = "two",
    secure3d: str = "card",
    currencies: tuple[str, ...] = ("KZT", "USD"),
    hosts: str = "",
) -> dict[str, str]:
    return {
        "flow": flow,
        "secure3d": secure3d,
        "hosts": hosts,
        **{f"currency_{c}": "1" for c in currencies},
    }


def save(user: httpx.Client, terminal_id: str, **changes: Any) -> httpx.Response:
    """The terminal's settings form, posted with the page's CSRF token."""
    csrf = csrf_of(user.get("/cabinet/terminals"))
    data = {"csrf": csrf} | settings_form(**changes)
    return user.post(f"/cabinet/terminals/{terminal_id}", data=data)


def api_token(client: httpx.Client, creds: dict[str, Any], **form: Any) -> httpx.Response:
    """POST /oauth2/token as this merchant; the answer as it is."""
    fields = {
        "grant_type": "client_credentials",
        "scope": "payment",
        "client_id": creds["clientId"],
        "client_secret": creds["clientSecret"],
        "terminal": creds["terminalId"],
        **form,
    }
    return client.post("/oauth2/token", data={k: str(v) for k, v in fields.items()})


def error_of(page: httpx.Response) -> str:
    found = re.search(r'<p class="error"[^>]*role="alert">(.*?)</p>', page.text, re.S)
    assert found is not None, page.text
    return found.group(1)


def secret_of(page: httpx.Response) -> str:
    found = re.search(r'<code id="client-secret">([^<]+)</code>', page.text)
    assert found is not None, page.text
    return found.group(1)


# --- the page ------------------------------------------------------------------------


def test_page_lists_terminals_and_the_client_id_never_the_secret(gateway: Gateway) -> None:
    with gateway.client() as anonymous:
        assert anonymous.get("/cabinet/terminals").headers["location"] == "/cabinet/login"
    creds, user = shop(gateway)
    with closing(user):
        page = user.get("/cabinet/terminals?lang=en")
        assert page.status_code == 200, page.text
        assert page.headers["cache-control"] == "no-store"
        assert f'<code id="client-id">{creds["clientId"]}</code>' in page.text
        assert creds["terminalId"] in page.text
        assert creds["clientSecret"] not in page.text
        assert 'id="nav-terminals" aria-current="page"' in page.text
        section = page.text.split(f'id="terminal-{creds["terminalId"]}"')[1]
        assert '<span class="status">test</span>' in section
        # As the CLI created it: two-step, 3-D Secure as the card says, KZT and USD.
        tid = creds["terminalId"]
        for checked in (f"flow-two-{tid}", f"secure3d-card-{tid}", f"currency-KZT-{tid}"):
            assert re.search(rf'id="{checked}" checked>', section), checked
        for unchecked in (f"flow-one-{tid}", f"currency-EUR-{tid}", f"currency-RUB-{tid}"):
            assert re.search(rf'id="{unchecked}">', section), unchecked
        # Only this merchant's terminals.
        assert gateway_terminal_ids(page) == [tid]
        russian = user.get("/cabinet/terminals?lang=ru")
        assert "<h1>Терминалы</h1>" in russian.text and "Двухстадийная" in russian.text


def gateway_terminal_ids(page: httpx.Response) -> list[str]:
    return re.findall(r'data-terminal="([^"]+)"', page.text)


def test_one_step_and_3ds_always_apply_to_the_next_payment(gateway: Gateway) -> None:
    creds, user = shop(gateway)
    with closing(user), gateway.client() as api:
        user.get("/cabinet/terminals?lang=en")
        _invoice, before = pay_as(gateway, api, creds=creds)
        assert before.json()["status"] == "AUTH", before.text
        saved = save(user, creds["terminalId"], flow="one")
        assert saved.status_code == 303, saved.text
        assert saved.headers["location"].startswith("/cabinet/terminals?outcome=ok&")
        notice = user.get(saved.headers["location"])
        assert "Settings of terminal “Terminal shop” saved." in notice.text
        assert terminal_row(gateway, creds["terminalId"])[:3] == (False, "card", "KZT USD")
        _invoice, after = pay_as(gateway, api, creds=creds)
        assert after.status_code == 200 and after.json()["status"] == "CHARGE", after.text
        assert after.json()["secure3D"] is None

        assert save(user, creds["terminalId"], flow="two", secure3d="always").status_code == 303
        _invoice, challenged = pay_as(gateway, api, creds=creds)
        assert challenged.status_code == 200, challenged.text
        assert challenged.json()["secure3D"] is not None and "status" not in challenged.json()
        assert terminal_row(gateway, creds["terminalId"])[:2] == (True, "always")


@pytest.mark.parametrize(
    ("first", "then", "status"), [("two", "one", "AUTH"), ("one", "two", "CHARGE")]
)
def test_a_flow_change_does_not_touch_a_payment_waiting_for_3ds(
    gateway: Gateway, first: str, then: str, status: str
) -> None:
    """The acquirer was asked to authorize (or to charge) when the payment began: the
    payment ends so even if the terminal's flow changes while the cardholder is at the
    ACS; the next payment takes the new flow."""
    creds, user = shop(gateway)
    tid = creds["terminalId"]
    with closing(user), gateway.client() as api:
        assert save(user, tid, flow=first, secure3d="always").status_code == 303
        tok = api_token(api, creds).json()["access_token"]
        body = payment_body(gateway, new_invoice())
        body["cryptogram"] = cryptogram(gateway, *VISA_3DS, terminal=tid)
        started = cryptopay(api, tok, body)
        assert started.status_code == 200 and started.json()["secure3D"], started.text
        pending = Pending(tok, body["invoiceId"], started.json())
        assert save(user, tid, flow=then, secure3d="always").status_code == 303
        pa_res, md = pass_acs(api, pending)
        done = confirm(api, tok, pending.id, pa_res, md)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == status, done.text
        charged = query(
            gateway.database_url,
            "SELECT amount_charged FROM transactions WHERE id = :i",
            i=pending.id,
        )[0][0]
        assert int(charged) == (10000 if status == "CHARGE" else 0)  # minor units


def test_a_removed_currency_is_refused_for_tokens_and_payments(gateway: Gateway) -> None:
    creds, user = shop(gateway)
    with closing(user), gateway.client() as api:
        assert api_token(api, creds, invoiceID=new_invoice(), amount=10, currency="USD").is_success
        saved = save(user, creds["terminalId"], currencies=("KZT", "EUR"))
        assert saved.status_code == 303, saved.text
        assert terminal_row(gateway, creds["terminalId"])[2] == "KZT EUR"
        refused = api_token(api, creds, invoiceID=new_invoice(), amount=10, currency="USD")
        assert refused.status_code == 400, refused.text
        assert "terminal does not accept USD" in refused.json()["error_description"]
        assert api_token(api, creds, invoiceID=new_invoice(), amount=10, currency="EUR").is_success
        # A token bound to no currency: the payment itself is refused.
        unbound = api_token(api, creds).json()["access_token"]
        invoice = new_invoice()
        body = payment_body(gateway, invoice, currency="USD")
        body["cryptogram"] = cryptogram(
            gateway, "4405639704015096", "0125", "815", terminal=creds["terminalId"]
        )
        paid = cryptopay(api, unbound, body)
        assert paid.status_code == 400, paid.text
        assert "does not accept USD" in paid.json()["message"]


def test_bad_settings_are_refused_with_a_clear_message_and_change_nothing(
    gateway: Gateway,
) -> None:
    creds, user = shop(gateway)
    tid = creds["terminalId"]
    stored = terminal_row(gateway, tid)
    with closing(user):
        user.get("/cabinet/terminals?lang=en")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"currencies": ()}, "Choose at least one currency."),
            ({"flow": "three"}, "Choose the one-step or the two-step flow."),
            ({"secure3d": "sometimes"}, "Choose when to ask for 3-D Secure."),
            (
                {"hosts": "shop.kz\nhttps://pay.shop.kz"},
                "Allowed hosts: “https://pay.shop.kz”: write the host name only, "
                "without http:// or https://.",
            ),
            (
                {"hosts": "shop.kz:8443"},
                "Allowed hosts: “shop.kz:8443”: write the host name only, without a port.",
            ),
            (
                {"hosts": "shop.kz/notify"},
                "Allowed hosts: “shop.kz/notify”: write the host name only, without a path.",
            ),
            (
                {"hosts": "*.shop.kz"},
                "Allowed hosts: “*.shop.kz”: wildcards are not supported: list each host name.",
            ),
            ({"hosts": "shop_kz.kz"}, "Allowed hosts: “shop_kz.kz”: not a host name."),
            ({"hosts": "-shop.kz"}, "Allowed hosts: “-shop.kz”: not a host name."),
            ({"hosts": "a" * 2100}, "The host list is longer than 2000 characters."),
        ]
        for changes, message in cases:
            page = save(user, tid, **changes)
            assert page.status_code == 400, (changes, page.text)
            assert error_of(page) == message, changes
            assert f'id="error-{tid}"' in page.text  # shown at the terminal's form
            assert terminal_row(gateway, tid) == stored, changes
        # What was typed is shown again, to be corrected.
        page = save(user, tid, flow="one", currencies=("EUR",), hosts="ok.kz\nbad host:1")
        assert page.status_code == 400
        assert f'id="flow-one-{tid}" checked>' in page.text
        assert f'id="currency-EUR-{tid}" checked>' in page.text
        assert f'id="currency-KZT-{tid}">' in page.text
        assert ">ok.kz\nbad host:1</textarea>" in page.text
        # An unknown field is named, not ignored.
        csrf = csrf_of(user.get("/cabinet/terminals"))
        data = {"csrf": csrf, "currency_GBP": "1"} | settings_form()
        unknown = user.post(f"/cabinet/terminals/{tid}", data=data)
        assert (
            unknown.status_code == 400 and error_of(unknown) == "Unknown form field: currency_GBP."
        )
        # The same refusal in Russian.
        user.get("/cabinet/terminals?lang=ru")
        russian = save(user, tid, hosts="http://shop.kz")
        assert error_of(russian) == (
            "Разрешённые хосты: «http://shop.kz»: укажите только имя хоста, "
            "без http:// или https://."
        )
        assert terminal_row(gateway, tid) == stored


def test_hosts_are_normalised_and_shown_one_a_line(gateway: Gateway) -> None:
    creds, user = shop(gateway)
    tid = creds["terminalId"]
    with closing(user):
        saved = save(user, tid, hosts="Shop.KZ\n\n  пример.рф , pay.shop.kz.\nshop.kz\n")
        assert saved.status_code == 303, saved.text
        assert terminal_row(gateway, tid)[3] == "shop.kz xn--e1afmkfd.xn--p1ai pay.shop.kz"
        page = user.get("/cabinet/terminals")
        assert ">shop.kz\nxn--e1afmkfd.xn--p1ai\npay.shop.kz</textarea>" in page.text
        assert save(user, tid, hosts="").status_code == 303
        assert terminal_row(gateway, tid)[3] == ""


def test_another_merchants_terminal_and_a_missing_csrf_change_nothing(gateway: Gateway) -> None:
    mine, user = shop(gateway, "Mine")
    theirs = new_merchant(gateway, "Theirs")
    stored = terminal_row(gateway, theirs["terminalId"])
    with closing(user):
        other = save(user, theirs["terminalId"], flow="one", currencies=("EUR",))
        assert other.status_code == 404, other.text
        assert theirs["terminalId"] not in other.text
        assert terminal_row(gateway, theirs["terminalId"]) == stored
        sandbox = save(user, "67e34d63-102f-4bd1-898e-370781d0074d", flow="one")
        assert sandbox.status_code == 404
        no_csrf = user.post(
            f"/cabinet/terminals/{mine['terminalId']}", data=settings_form(flow="one")
        )
        assert no_csrf.status_code == 403
        cross_site = user.post(
            f"/cabinet/terminals/{mine['terminalId']}",
            data={"csrf": csrf_of(user.get("/cabinet/terminals"))} | settings_form(flow="one"),
            headers={"Origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403
        assert terminal_row(gateway, mine["terminalId"])[0] is True


def test_a_hostile_terminal_name_is_shown_as_text(gateway: Gateway) -> None:
    name = '<script>alert("x")</script><img src=x>'
    creds, user = shop(gateway, name)
    with closing(user):
        page = user.get("/cabinet/terminals?lang=en")
        assert name not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x&gt;" in page.text
        saved = save(user, creds["terminalId"], flow="one")
        notice = user.get(saved.headers["location"])
        assert name not in notice.text
        assert "&lt;script&gt;" in notice.text and 'role="status"' in notice.text


# --- allowed hosts -------------------------------------------------------------------


def test_host_check_function() -> None:
    terminal = Terminal(id="t-1", allowed_hosts="shop.kz xn--e1afmkfd.xn--p1ai")
    assert link_problem(terminal, {"postLink": "https://SHOP.kz./notify?x=1"}) == ""
    assert link_problem(terminal, {"backLink": "https://пример.рф/ok"}) == ""
    assert link_problem(terminal, {"postLink": "", "backLink": ""}) == ""
    assert link_problem(terminal, {"failureBackLink": "https://evil.kz/x"}) == (
        "failureBackLink: host evil.kz is not among the allowed hosts of terminal t-1"
    )
    # Subdomains are not implied, and a look-alike suffix is another host.
    assert link_problem(terminal, {"postLink": "https://pay.shop.kz/"}) != ""
    assert link_problem(terminal, {"postLink": "https://evilshop.kz/"}) != ""
    assert link_problem(terminal, {"postLink": "https://shop.kz@evil.kz/"}) != ""
    # A browser ends the host at a backslash, urlsplit and httpx do not: refused.
    assert link_problem(terminal, {"backLink": "https://evil.kz\\@shop.kz/ok"}) == (
        "backLink: the host cannot be read unambiguously (a backslash before the path); "
        "terminal t-1 only allows links to its allowed hosts"
    )
    assert link_problem(terminal, {"backLink": "https://shop.kz/a\\b?c=\\"}) == ""
    assert link_problem(Terminal(id="t-2", allowed_hosts=""), {"postLink": "https://a.b/"}) == ""
    with pytest.raises(HostError) as too_many:
        parse_hosts("\n".join(f"h{i}.kz" for i in range(51)))
    assert too_many.value.code == "too_many"


def test_sandbox_accepts_any_host(gateway: Gateway) -> None:
    creds, user = shop(gateway)
    with closing(user), gateway.client() as api:
        assert save(user, creds["terminalId"], hosts="shop.kz").status_code == 303
        tok = api_token(
            api,
            creds,
            invoiceID=new_invoice(),
            amount=100,
            currency="KZT",
            postLink="https://elsewhere.example/notify",
        )
        assert tok.status_code == 200, tok.text
        _invoice, paid = pay_as(gateway, api, creds=creds, postLink="https://elsewhere.example/n")
        assert paid.status_code == 200, paid.text


#: Links that the host check and a browser could read differently.
TRICKY_LINKS = (
    "https://shop.kz/ok",
    "https://SHOP.KZ./ok",
    "https://shop.kz:8443/ok",
    "https://\uff53\uff48\uff4f\uff50.kz/ok",  # fullwidth letters
    "https://shop\u3002kz/ok",  # an ideographic full stop
    "https://evil.example\\@shop.kz/",
    "https://evil.example\\x@shop.kz/",
    "https://shop.kz\\@evil.example/",
    "https://evil.example%5C@shop.kz/",
    "https://evil.example%2F@shop.kz/",
    "https://shop.kz@evil.example/",
    "https://shop.kz:443@evil.example/",
    "https://shop.kz%2Eevil.example/",
    "https://%73hop.kz/",
    "https://evil.example#@shop.kz/",
    "https://evil.example?@shop.kz/",
    "https://evil.example;@shop.kz/",
    "https://[::1]@shop.kz/",
    "https://xn--shop-xyz.kz/",
    "https://\u0455hop.kz/",  # a Cyrillic look-alike s
    "https://shop.kz.evil.example/",
)


def test_an_allowed_link_goes_to_the_allowed_host_in_a_browser_and_httpx(
    browser: Browser,
) -> None:
    """Whatever the check lets through, Chromium (the cardholder's backLink) and httpx
    (the postLink) both take to shop.kz."""
    terminal = Terminal(id="t-1", allowed_hosts="shop.kz")
    page = browser.new_page()
    try:
        passed = []
        for url in TRICKY_LINKS:
            if link_problem(terminal, {"backLink": url}):
                continue
            passed.append(url)
            seen = page.evaluate("u => new URL(u).hostname", url)
            assert seen.rstrip(".") == "shop.kz", (url, seen)
            with contextlib.suppress(httpx.InvalidURL):  # it refuses fullwidth letters
                assert httpx.URL(url).host.rstrip(".") == "shop.kz", url
        assert passed[:3] == list(TRICKY_LINKS[:3]), passed  # the plain ones do pass
    finally:
        page.close()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A ``tolem serve`` in production mode (SQLite) with keys of its own; its
    merchants' terminals are test terminals (the simulator pays)."""
    data_dir: Path = tmp_path_factory.mktemp("production")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = data_dir / "rsa.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "TOLEM_MODE": "production",
        "TOLEM_RSA_PRIVATE_KEY_FILE": str(pem),
        "TOLEM_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_FINGERPRINT_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_CARD_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_ACQUIRER": f"{__name__}:acquirer",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    with start_gateway(data_dir, f"sqlite:///{data_dir / 'tolem.db'}", extra_env=env) as gw:
        yield gw


def test_production_refuses_links_to_other_hosts(production: Gateway) -> None:
    gw = production
    creds = new_merchant(gw, "Production shop")
    email = new_user(gw, creds["clientId"], PASSWORD)
    with gw.client() as user, gw.client() as api:
        assert log_in(user, email, PASSWORD).status_code == 303
        # Empty list: any host.
        assert api_token(api, creds, postLink="https://anywhere.example/n").is_success
        assert save(user, creds["terminalId"], hosts="shop.kz\nnotify.shop.kz").status_code == 303

        ok = api_token(
            api,
            creds,
            invoiceID=new_invoice(),
            amount=100,
            currency="KZT",
            postLink="https://notify.shop.kz/epay",
            failurePostLink="https://SHOP.KZ/epay/fail",
        )
        assert ok.status_code == 200, ok.text
        for field in ("postLink", "failurePostLink"):
            refused = api_token(api, creds, **{field: "https://evil.example/steal"})
            assert refused.status_code == 400, refused.text
            assert refused.headers["content-type"].startswith("application/json")
            answer = refused.json()
            assert answer["error"] == "invalid_request"
            assert answer["error_description"] == (
                f"{field}: host evil.example is not among the allowed hosts of terminal "
                f"{creds['terminalId']}"
            )

        # The payment's own links: cryptopay's postLinks, a saved card's backLinks too.
        def pay(**links: str) -> httpx.Response:
            invoice = new_invoice()
            tok = api_token(api, creds).json()["access_token"]
            body = payment_body(gw, invoice) | links
            body["cryptogram"] = cryptogram(
                gw, "4405639704015096", "0125", "815", terminal=creds["terminalId"]
            )
            return cryptopay(api, tok, body)

        def pay_with_card(card_id: str, **links: str) -> httpx.Response:
            invoice = new_invoice()
            tok = api_token(api, creds).json()["access_token"]
            body = {
                "amount": 100,
                "currency": "KZT",
                "name": "JON JONSON",
                "terminalId": creds["terminalId"],
                "invoiceId": invoice,
                "description": "repeat order",
                "accountId": "uuid000001",
                "paymentType": "cardId",
                "cardId": {"id": card_id},
                **links,
            }
            headers = {"Authorization": f"Bearer {tok}"}
            return api.post("/payments/cards/auth", json=body, headers=headers)

        good = {"postLink": "https://shop.kz/n", "failurePostLink": "https://shop.kz/f"}
        paid = pay(**good)
        assert paid.status_code == 200 and paid.json()["status"] == "AUTH", paid.text
        for field in ("postLink", "failurePostLink"):
            refused = pay(**(good | {field: "https://evil.example/x"}))
            assert refused.status_code == 400, refused.text
            assert refused.json()["message"].startswith(f"{field}: host evil.example is not")
        card_id = paid.json()["cardID"]
        back = good | {"backLink": "https://shop.kz/ok", "failureBackLink": "https://shop.kz/no"}
        again = pay_with_card(card_id, **back)
        assert again.status_code == 200 and again.json()["status"] == "AUTH", again.text
        for field in ("backLink", "failureBackLink"):
            refused = pay_with_card(card_id, **(back | {field: "https://evil.example/x"}))
            assert refused.status_code == 400, refused.text
            assert refused.json()["message"].startswith(f"{field}: host evil.example is not")
        # A backslash before the path: a browser would go to evil.example.
        sneaky = back | {"backLink": "https://evil.example\\@shop.kz/ok"}
        refused = pay_with_card(card_id, **sneaky)
        assert refused.status_code == 400, refused.text
        assert refused.json()["message"].startswith(
            "backLink: the host cannot be read unambiguously"
        )

        # The hosted page (payform): its backLinks and postLinks are checked too.
        def pay_on_page(**links: str) -> httpx.Response:
            invoice = new_invoice()
            tok = api_token(api, creds, invoiceID=invoice, amount=100, currency="KZT")
            assert tok.status_code == 200, tok.text
            obj = payment_object(tok.json(), invoice, terminal=creds["terminalId"]) | links
            return submit(api, params_of(payform_link(gw, obj)))

        on_page = back | {"postLink": "https://shop.kz/n", "failurePostLink": "https://shop.kz/f"}
        assert pay_on_page(**on_page).status_code == 303
        for field, link, says in (
            ("backLink", "https://evil.example/ok", "host evil.example is not"),
            ("failureBackLink", "https://evil.example\\@shop.kz/", "the host cannot be read"),
            ("postLink", "https://evil.example/n", "host evil.example is not"),
        ):
            page = pay_on_page(**(on_page | {field: link}))
            assert page.status_code == 400, page.text
            assert f"{field}: {says}" in page.text, page.text
        # Emptied again: any host once more.
        assert save(user, creds["terminalId"], hosts="").status_code == 303
        assert api_token(api, creds, postLink="https://evil.example/n").is_success


# --- the ClientSecret ----------------------------------------------------------------


def test_rotating_the_secret_shows_it_once_and_the_old_one_stops_working(
    gateway: Gateway,
) -> None:
    creds, user = shop(gateway)
    old = creds["clientSecret"]
    with closing(user), gateway.client() as api:
        assert api_token(api, creds).status_code == 200
        csrf = csrf_of(user.get("/cabinet/terminals?lang=en"))
        question = user.post("/cabinet/terminals/secret", data={"csrf": csrf})
        assert question.status_code == 200, question.text
        assert "Issue a new ClientSecret?" in question.text
        assert api_token(api, creds).status_code == 200  # asking changes nothing
        fields = confirm_fields(question)
        done = user.post("/cabinet/terminals/secret/confirm", data=fields)
        assert done.status_code == 200, done.text
        assert done.headers["cache-control"] == "no-store"
        new = secret_of(done)
        assert len(new) >= 40 and new != old
        assert creds["clientId"] in done.text

        refused = api_token(api, creds)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_client"
        assert api_token(api, creds | {"clientSecret": new}).status_code == 200

        # Shown once: the confirmation is spent, and the page shows the secret no more.
        again = user.post("/cabinet/terminals/secret/confirm", data=fields)
        assert again.status_code == 400 and new not in again.text
        assert "out of date or already used" in error_of(again)
        assert new not in user.get("/cabinet/terminals").text
        assert api_token(api, creds | {"clientSecret": new}).status_code == 200

        # Stored as salt and digest only; logged without the secret.
        salt, digest = query(
            gateway.database_url,
            "SELECT secret_salt, secret_digest FROM merchants WHERE client_id = :c",
            c=creds["clientId"],
        )[0]
        assert new not in (salt, digest) and len(digest) == 64
        log = gateway.log_text()
        assert f"ClientSecret of merchant {creds['merchantId']} rotated by {creds['email']}" in log
        assert new not in log and old not in log


def test_two_confirmations_at_once_rotate_once(gateway: Gateway) -> None:
    """The same confirmation posted four times at once: one new secret, shown once, and
    it is the one that works."""
    creds, user = shop(gateway)
    with closing(user), gateway.client() as api:
        csrf = csrf_of(user.get("/cabinet/terminals?lang=en"))
        fields = confirm_fields(user.post("/cabinet/terminals/secret", data={"csrf": csrf}))
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: user.post("/cabinet/terminals/secret/confirm", data=fields),
                    range(4),
                )
            )
        shown = [secret_of(a) for a in answers if a.status_code == 200]
        assert len(shown) == 1, [a.status_code for a in answers]
        assert sorted(a.status_code for a in answers) == [200, 400, 400, 400]
        assert api_token(api, creds | {"clientSecret": shown[0]}).status_code == 200
        assert api_token(api, creds).status_code == 401


def test_rotation_needs_the_confirmation_and_the_session(gateway: Gateway) -> None:
    creds, user = shop(gateway)
    with closing(user), gateway.client() as api:
        csrf = csrf_of(user.get("/cabinet/terminals?lang=en"))
        forged = user.post(
            "/cabinet/terminals/secret/confirm", data={"csrf": csrf, "confirmation": "0" * 64}
        )
        assert forged.status_code == 400 and 'id="client-secret"' not in forged.text
        fields = confirm_fields(user.post("/cabinet/terminals/secret", data={"csrf": csrf}))
        no_csrf = user.post(
            "/cabinet/terminals/secret/confirm", data={"confirmation": fields["confirmation"]}
        )
        assert no_csrf.status_code == 403
        # Another user of another merchant cannot use this confirmation.
        _other, stranger = shop(gateway, "Stranger")
        with closing(stranger):
            theirs = {"csrf": csrf_of(stranger.get("/cabinet/terminals"))}
            used = stranger.post(
                "/cabinet/terminals/secret/confirm",
                data=theirs | {"confirmation": fields["confirmation"]},
            )
            assert used.status_code == 400
        with gateway.client() as anonymous:
            assert anonymous.post("/cabinet/terminals/secret/confirm", data=fields).status_code in (
                303,
                403,
            )
        assert api_token(api, creds).status_code == 200  # still the old secret


def test_the_sandbox_merchants_published_secret_is_not_rotated(gateway: Gateway) -> None:
    with gateway.client() as user, gateway.client() as api:
        assert log_in(user, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
        csrf = csrf_of(user.get("/cabinet/terminals?lang=en"))
        asked = user.post("/cabinet/terminals/secret", data={"csrf": csrf})
        assert asked.status_code == 303
        page = user.get(asked.headers["location"])
        assert "create a merchant of your own" in error_of(page)
        sandbox = {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "terminalId": ""}
        assert api_token(api, sandbox).status_code == 200


# --- in a browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_terminals_page_at_desktop_and_phone_width(
    gateway: Gateway, browser: Browser, backend: str
) -> None:
    creds = new_merchant(gateway, "Browser shop")
    email = new_user(gateway, creds["clientId"], PASSWORD)
    tid = creds["terminalId"]
    page = browser.new_page(viewport=DESKTOP)  # type: ignore[arg-type]
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{gateway.base_url}/cabinet/login?lang=en")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_selector("#logout")
    page.click("#nav-terminals")
    page.wait_for_url("**/cabinet/terminals")
    assert page.locator("h1").inner_text() == "Terminals"
    assert page.locator("#client-id").inner_text() == creds["clientId"]
    page.check(f"#flow-one-{tid}")
    page.check(f"#currency-EUR-{tid}")
    page.fill(f"#hosts-{tid}", "shop.kz\npay.shop.kz")
    page.click(f"#save-{tid}")
    page.wait_for_selector("#message")
    assert page.locator("#message").inner_text() == "Settings of terminal “Browser shop” saved."
    assert page.locator(f"#flow-one-{tid}").is_checked()
    assert terminal_row(gateway, tid) == (False, "card", "KZT USD EUR", "shop.kz pay.shop.kz")
    page.screenshot(path=screenshot_path(f"cabinet-terminals-desktop-{backend}"), full_page=True)

    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.goto(f"{gateway.base_url}/cabinet/terminals")
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths  # nothing scrolls sideways at phone width
    page.screenshot(path=screenshot_path(f"cabinet-terminals-phone-{backend}"), full_page=True)

    page.click("#rotate")
    page.wait_for_selector("#question")
    page.click("#confirm")
    page.wait_for_selector("#client-secret")
    secret = page.locator("#client-secret").inner_text().strip()
    assert secret and secret != creds["clientSecret"]
    page.screenshot(path=screenshot_path(f"cabinet-secret-phone-{backend}"), full_page=True)
    assert problems == []
    page.close()
