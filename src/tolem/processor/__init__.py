"""The acquirer side: the interface, its simulator, and how a connector is chosen."""

from __future__ import annotations

import importlib

from tolem.config import Settings
from tolem.db.engine import Database
from tolem.processor.base import Acquirer


class AcquirerConfigError(RuntimeError):
    pass


def load_acquirer(settings: Settings, db: Database) -> Acquirer | None:
    """The configured connector for live terminals, or None when there is none.

    Production mode refuses to run without one: a gateway that sent real cards to the
    simulator would approve payments that move no money.
    """
    if not settings.acquirer:
        if not settings.is_sandbox:
            raise AcquirerConfigError(
                "production mode needs TOLEM_ACQUIRER (module:factory of an acquirer connector)"
            )
        return None
    module_name, _, attribute = settings.acquirer.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute or "create_acquirer")
    except (ImportError, AttributeError) as exc:
        raise AcquirerConfigError(f"cannot load TOLEM_ACQUIRER={settings.acquirer}: {exc}") from exc
    acquirer: Acquirer = factory(settings, db)
    return acquirer
