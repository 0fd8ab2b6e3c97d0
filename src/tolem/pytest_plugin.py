"""pytest plugin: the ``tolem_gateway`` fixture for a shop's own test suite.

Installed with tolem (entry point ``pytest11``), so it needs no configuration::

    def test_checkout(tolem_gateway):
        payment = tolem_gateway.client.pay(order, card)
        postlink = tolem_gateway.postlinks.wait_for(order.invoice_id)

``tolem_gateway`` starts one sandbox gateway per test session on a free port with a
temporary SQLite database (``--tolem-database-url`` or the ini option
``tolem_database_url`` for another, e.g. PostgreSQL) and yields a
:class:`tolem.testing.Gateway`: ``.client`` (an EpayClient for ePay's test merchant),
``.merchant`` (its credentials), ``.postlinks`` (a recorder whose ``.url`` you give as
postLink), ``.url``, ``.new_client()`` and ``.async_client()``. The gateway is shared by
the session, so use a fresh invoice in each test; the recorder filters by invoice.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tolem.testing import Gateway, running_gateway


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tolem", "tolem payment gateway")
    group.addoption(
        "--tolem-database-url",
        default=None,
        help="database of the tolem_gateway fixture (default: a temporary SQLite file)",
    )
    parser.addini("tolem_database_url", "database of the tolem_gateway fixture", default="")


@pytest.fixture(scope="session")
def tolem_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A running sandbox tolem gateway with a ready client and a postLink recorder."""
    url = request.config.getoption("--tolem-database-url") or request.config.getini(
        "tolem_database_url"
    )
    with running_gateway(tmp_path_factory.mktemp("tolem"), database_url=url or None) as gw:
        yield gw
