"""The delivery worker: claim due postLinks, POST them, record every attempt.

It runs inside ``tolem serve`` (every worker process) unless turned off, and alone as
``tolem worker``; any number of them may run against one database. Delivery is at
least once: a worker that dies mid-attempt leaves a claim that expires, and the
postLink is sent again. A receiver therefore sees a duplicate only for an attempt
whose answer it sent but the worker never read.

Any 2xx answer means delivered. Everything else (another status, a redirect, which
is not followed, a time-out, a refused or dropped connection) is retried on the
schedule, then given up. In production mode a postLink may only go to a public
address: the name is resolved at send time, every address it resolves to is checked,
and the connection goes to the address that was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import idna
from sqlalchemy import select
from sqlalchemy.orm import Session

from tolem import __version__
from tolem.db.base import utcnow
from tolem.notifications import service, signing
from tolem.notifications.models import Notification, NotificationState
from tolem.runtime import Runtime

log = logging.getLogger("tolem.notifications")


class DestinationRefused(Exception):
    pass


def schedule_of(text: str) -> tuple[float, ...]:
    """``"10,60,300"`` as seconds; the settings check the format."""
    return tuple(float(part) for part in text.split(",") if part.strip())


async def public_address(host: str, port: int) -> str:
    """The address to connect to, if every address of ``host`` is a public one."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DestinationRefused(f"cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not _public(address):
            raise DestinationRefused(
                f"{host} resolves to {address}, which is not a public address "
                "(loopback, private, link-local and metadata addresses are refused "
                "in production mode)"
            )
    if not addresses:
        raise DestinationRefused(f"cannot resolve {host}")
    return str(addresses[0])


# Ranges is_global lets through that still reach somewhere private or nowhere public.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.0.0/24", "64:ff9b:1::/48", "::/96", "2001:db8::/32")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    if any(address in net for net in _NOT_PUBLIC if net.version == address.version):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 (mapped, 6to4, NAT64) counts as that IPv4 address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
    return True


def _ascii_host(host: str) -> str:
    """The name as DNS and TLS know it (punycode); an address literal as it is."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return idna.encode(host, uts46=True).decode("ascii")


_Batch = Sequence[tuple[service.Claimed, service.AttemptResult]]


class _Recorder:
    """Attempts' results recorded a batch at a time: whatever finished while the last
    batch was being written goes in the next write transaction (one commit for many)."""

    def __init__(self, write: Callable[[_Batch], Awaitable[list[str | BaseException]]]) -> None:
        self._write = write
        self._pending: list[tuple[service.Claimed, service.AttemptResult, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()

    async def record(self, claimed: service.Claimed, result: service.AttemptResult) -> str:
        """The notification's new state, once the batch holding this result commits."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((claimed, result, done))
        self._wake.set()
        return await done

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            stopping: BaseException | None = None
            try:
                states = await self._write([(c, r) for c, r, _ in batch])
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the recorder goes on, whatever one batch met
                states = [exc] * len(batch)
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    stopping = exc
            for (_, _, done), state in zip(batch, states, strict=True):
                if done.done():  # its task was cancelled meanwhile
                    continue
                if isinstance(state, BaseException):
                    done.set_exception(state)
                else:
                    done.set_result(state)
            if stopping is not None:
                raise stopping


class DeliveryWorker:
    def __init__(self, rt: Runtime, *, name: str = "worker") -> None:
        settings = rt.settings
        self.rt = rt
        self.name = name
        self.schedule: Sequence[float] = schedule_of(settings.postlink_retry_schedule)
        self.timeout = settings.postlink_timeout
        # The claim outlives the attempt: a live worker always records before it ends.
        self.lease = 2 * self.timeout + 1
        self.poll = settings.postlink_poll_interval
        self.concurrency = settings.postlink_concurrency
        self.check_destinations = not settings.is_sandbox
        self._tasks: set[asyncio.Task[None]] = set()
        self._recorder = _Recorder(self._record)

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        recorder = asyncio.create_task(self._recorder.run())
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=self.timeout, trust_env=False, limits=limits
        ) as client:
            try:
                while not stop.is_set():
                    await self._step(client, stop)
                # Stopping: let the attempts under way finish and be recorded, so that
                # a restart does not send them again.
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=self.timeout + 1)
            finally:
                for task in self._tasks:
                    task.cancel()  # its claim expires; the postLink will be sent again
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder

    async def _step(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        free = self.concurrency - len(self._tasks)
        if free <= 0:  # every slot busy: wait for one to free up (or a poll's time)
            await asyncio.wait(set(self._tasks), timeout=self.poll, return_when="FIRST_COMPLETED")
            return
        batch: list[service.Claimed] = []
        if free > 0:
            try:
                batch = await self._claim(free)
            except Exception:
                log.exception("claiming postLinks failed; retrying")
        for claimed in batch:
            task = asyncio.create_task(self._deliver(client, claimed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(batch) < free:  # nothing more is due now: wait a little
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    async def _claim(self, limit: int) -> list[service.Claimed]:
        now = utcnow()
        # A cheap look first (one indexed read): claiming takes the writer.
        if not await self.rt.db.read_on_the_loop(lambda session: self._due(session, now)):
            return []
        # Claims and records are writes on the event loop, beside the payments of the
        # process (on SQLite in their group commit): in a thread, each statement waited
        # for the GIL behind the busy loop, on SQLite holding the writer meanwhile
        # (BENCHMARKS.md, "Fifth round" and "Sixth round").
        return await self.rt.db.transact_on_the_loop(
            lambda session: service.claim(
                session, now=now, limit=limit, lease=self.lease, max_steps=len(self.schedule) + 1
            )
        )

    @staticmethod
    def _due(session: Session, now: datetime) -> bool:
        due = session.scalars(
            select(Notification.id)
            .where(
                Notification.state == NotificationState.PENDING.value,
                Notification.next_attempt_at <= now,
            )
            .limit(1)
        ).first()
        return due is not None

    async def _deliver(self, client: httpx.AsyncClient, claimed: service.Claimed) -> None:
        result = await self.attempt(client, claimed)
        try:
            state = await self._recorder.record(claimed, result)
        except Exception:
            log.exception("recording postLink %s failed; its claim will expire", claimed.id)
            return
        log.info(
            "postLink %s attempt %d: %s (%s) %s",
            claimed.id,
            claimed.number,
            result.http_status or result.error,
            f"{result.latency_ms} ms",
            state,
        )

    async def _record(
        self, batch: Sequence[tuple[service.Claimed, service.AttemptResult]]
    ) -> list[str | BaseException]:
        """Record finished attempts in one write transaction. If that fails, each is
        recorded again in a transaction (or, on SQLite, a savepoint) of its own: one that
        fails is answered with its error and the others still count. (A savepoint for
        each from the start cost two statements per attempt, for a failure that hardly
        ever comes.)"""
        schedule = self.schedule
        failed: list[Exception] = []

        def one(
            claimed: service.Claimed, result: service.AttemptResult
        ) -> Callable[[Session], str]:
            return lambda session: service.record(session, claimed, result, schedule=schedule)

        def every(session: Session) -> list[str]:
            states = []
            for claimed, result in batch:
                try:
                    states.append(one(claimed, result)(session))
                except Exception as exc:
                    failed.append(exc)
                    raise
            return states

        try:
            return list(await self.rt.db.transact_on_the_loop(every))
        except Exception:
            if not failed:  # the transaction itself failed: every result with it
                raise
            if len(batch) == 1:
                return [failed[0]]
        return list(
            await asyncio.gather(
                *(self.rt.db.transact_on_the_loop(one(c, r)) for c, r in batch),
                return_exceptions=True,
            )
        )

    async def attempt(
        self, client: httpx.AsyncClient, claimed: service.Claimed
    ) -> service.AttemptResult:
        """One POST, within one deadline (name lookup included), whatever goes wrong."""
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            # httpx's timeout bounds each step (connect, each read); this bounds the whole.
            async with asyncio.timeout(self.timeout):
                return await self._post(client, claimed, elapsed)
        except TimeoutError:
            return service.AttemptResult(None, elapsed(), f"timed out after {self.timeout:g} s")
        except DestinationRefused as exc:
            return service.AttemptResult(None, elapsed(), str(exc), permanent=True)
        except signing.SigningSecretError as exc:
            return service.AttemptResult(None, elapsed(), str(exc))
        except httpx.TimeoutException:
            return service.AttemptResult(None, elapsed(), f"timed out after {self.timeout:g} s")
        except httpx.TransportError as exc:
            return service.AttemptResult(None, elapsed(), f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # an address no client can use: retrying will not help
            log.warning("postLink %s cannot be sent: %r", claimed.id, exc)
            return service.AttemptResult(
                None, elapsed(), f"{type(exc).__name__}: {exc}"[:500], permanent=True
            )

    async def _post(
        self, client: httpx.AsyncClient, claimed: service.Claimed, elapsed: Callable[[], int]
    ) -> service.AttemptResult:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"tolem-postlink/{__version__}",
        }
        if claimed.sealed_secret:
            secret = signing.unseal(
                self.rt.keys.card_keys, claimed.merchant_id, claimed.sealed_secret
            )
            headers |= signing.headers(secret, claimed.id, claimed.body)
        url = claimed.url
        extensions: dict[str, str] = {}
        parts = urlsplit(url)
        if self.check_destinations:
            host = _ascii_host(parts.hostname or "")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await public_address(host, port)
            # Connect to the address that was checked; the name still goes in Host and SNI.
            literal = f"[{address}]" if ":" in address else address
            url = urlunsplit(parts._replace(netloc=f"{literal}:{port}"))
            headers["Host"] = host if parts.port is None else f"{host}:{port}"
            if parts.scheme == "https":
                extensions["sni_hostname"] = host
        async with client.stream(
            "POST",
            url,
            content=claimed.body.encode("utf-8"),
            headers=headers,
            extensions=extensions,
        ) as response:  # the answer's body is never read: only its status counts
            status = response.status_code
        error = "" if 200 <= status < 300 else f"HTTP {status}"
        return service.AttemptResult(status, elapsed(), error)
