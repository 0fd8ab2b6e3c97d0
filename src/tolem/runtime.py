"""What a running gateway holds: settings, database, keys and the acquirer."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from tolem import velocity
from tolem.cards.vault import CardVault
from tolem.config import Settings
from tolem.db.engine import Database
from tolem.keys import Keyring, load_keyring
from tolem.merchants.models import Terminal
from tolem.oauth.tokens import TokenSealer
from tolem.payments import cryptogram
from tolem.payments.cryptogram import SideDecrypter
from tolem.processor import load_acquirer
from tolem.processor.base import Acquirer
from tolem.processor.simulator import Simulator


@dataclass
class Runtime:
    settings: Settings
    db: Database
    keys: Keyring
    sealer: TokenSealer
    vault: CardVault
    simulator: Simulator
    acquirer: Acquirer | None  # the live connector; None in sandbox mode
    velocity_limits: velocity.Limits  # the card-testing defence's limits (all off in sandbox)
    decrypter: SideDecrypter | None = None  # cryptograms decrypted beside the loop, or not

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        if not settings.is_sandbox:
            from tolem.production import check_settings

            check_settings(settings)
        keys = load_keyring(settings)
        db = Database(
            settings.effective_database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            background_checkpoints=True,
        )
        limits = velocity.Limits.from_settings(settings)
        limits.announce()
        try:
            acquirer = load_acquirer(settings, db)
        except BaseException:
            db.dispose()
            raise
        return cls(
            settings=settings,
            db=db,
            keys=keys,
            sealer=TokenSealer(keys.token_key),
            vault=CardVault(keys.card_key, retired=keys.card_previous),
            simulator=Simulator(
                db,
                root_key=keys.token_key,
                acs_url=f"{settings.effective_public_base_url}/acs/pa",
                challenge_seconds=settings.secure3d_timeout,
            ),
            acquirer=acquirer,
            velocity_limits=limits,
            decrypter=SideDecrypter()
            if cryptogram.wanted(settings.decrypt_thread, settings.workers)
            else None,
        )

    def acquirer_for(self, terminal: Terminal) -> Acquirer:
        """Test terminals pay through the simulator, the others through the connector."""
        if terminal.is_test or self.acquirer is None:
            return self.simulator
        return self.acquirer

    def close(self) -> None:
        if self.decrypter is not None:
            self.decrypter.close()
        self.db.dispose()


def runtime(request: Request) -> Runtime:
    """The gateway this request runs in: a FastAPI dependency, or called directly.

    The busiest endpoints (token, cryptopay, check-status) call it directly: solving
    it as a dependency cost about half a millisecond of CPU per request.
    """
    value: Runtime = request.app.state.runtime
    return value
