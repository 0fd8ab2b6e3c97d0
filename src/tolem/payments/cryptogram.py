"""The card cryptogram: RSA PKCS#1 v1.5 over compact JSON, in standard base64.

``{"hpan":"4405639704015096","expDate":"0125","cvc":"815","terminalId":"…"}``

Decryption errors are reported without detail that could serve as a padding oracle:
a wrong length, bad padding and a plaintext that is not JSON get the same answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import queue
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tolem.processor.base import Card
from tolem.wire import text_problem

# ASCII digits only: \d also matches other scripts' digits, which int() then accepts.
_PAN_RE = re.compile(r"[0-9]{12,19}")
_EXP_RE = re.compile(r"[0-9]{4}")
_CVC_RE = re.compile(r"[0-9]{1,4}")
_WHITESPACE = re.compile(r"\s+")


class CryptogramError(ValueError):
    pass


Keys = rsa.RSAPrivateKey | Sequence[rsa.RSAPrivateKey]


_UNREADABLE = (
    "cryptogram does not decrypt to card data: encrypt the JSON with this gateway's "
    "/public.rsa, RSA PKCS#1 v1.5"
)


def decrypt(private_key: Keys, text: str) -> tuple[Card, str]:
    """The card and the terminalId a cryptogram holds.

    ``private_key`` may be several keys during a rotation: the current one first, then
    earlier ones; the first that opens the cryptogram to a JSON object wins.
    """
    keys = (private_key,) if isinstance(private_key, rsa.RSAPrivateKey) else private_key
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptogramError("cryptogram is not standard base64") from exc
    # One message for every way decryption can fail (wrong length, bad padding, noise
    # that is not JSON), whichever key failed: distinct answers would make a padding
    # oracle on an OpenSSL without implicit rejection.
    not_an_object = False
    for key in keys:
        if len(raw) != key.key_size // 8:
            continue
        try:
            data = json.loads(key.decrypt(raw, padding.PKCS1v15()))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            return _card(data), _string(data, "terminalId")
        # Implicit rejection turns a wrong key's answer into random bytes, which may
        # happen to be JSON such as a lone digit: the next key may still open it.
        not_an_object = True
    if not_an_object:
        raise CryptogramError("cryptogram must hold a JSON object")
    raise CryptogramError(_UNREADABLE)


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CryptogramError(f"cryptogram: {name} is missing or not a string")
    text = str(value).strip()
    if len(text) > 64 or text_problem(text):
        raise CryptogramError(f"cryptogram: {name} is not a valid value")
    return text


def _card(data: dict[str, Any]) -> Card:
    pan = _string(data, "hpan").replace(" ", "")
    if not _PAN_RE.fullmatch(pan):
        raise CryptogramError("cryptogram: hpan must be 12 to 19 digits")
    exp = _string(data, "expDate").zfill(4)
    if not _EXP_RE.fullmatch(exp):
        raise CryptogramError("cryptogram: expDate must be MMYY")
    cvc = _string(data, "cvc")
    if not _CVC_RE.fullmatch(cvc):
        raise CryptogramError("cryptogram: cvc must be 3 or 4 digits")
    return Card(pan=pan, exp_month=int(exp[:2]), exp_year=2000 + int(exp[2:]), cvc=cvc)


_Job = tuple[Keys, str, "asyncio.Future[tuple[Card, str]]"]
_Done = tuple["asyncio.Future[tuple[Card, str]]", tuple[Card, str] | None, Exception | None]


class SideDecrypter:
    """Decrypts cryptograms in a thread of its own, beside the event loops that ask.

    OpenSSL lets go of the GIL while it decrypts, and the decryption is about a third
    of a payment's CPU: in a thread, it runs on another core while the event loop serves
    the next requests. That pays only with a core to spare (fewer busy processes than
    cores: see :func:`wanted`); one worker on two cores paid 16-41 % more cryptopays a
    second this way (BENCHMARKS.md, "Seventh round").

    One thread: it takes every cryptogram waiting, decrypts them in turn and hands the
    answers back to each loop in one call. (A pool of two measured slower: each answer
    must win the GIL back, and two threads asked for it twice as often.)
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    async def decrypt(self, private_key: Keys, text: str) -> tuple[Card, str]:
        """:func:`decrypt`'s answer (or its :class:`CryptogramError`), from the thread."""
        future: asyncio.Future[tuple[Card, str]] = asyncio.get_running_loop().create_future()
        with self._lock:  # never behind close()'s last word: the thread would not see it
            if self._closed:
                raise RuntimeError("the decrypter is closed")
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="tolem-decrypt", daemon=True)
                thread.start()
                self._thread = thread
            self._jobs.put((private_key, text, future))
        return await future

    def _run(self) -> None:
        try:
            while self._batch():
                pass
        finally:
            with self._lock:
                if self._thread is threading.current_thread():  # died, not closed: the
                    self._thread = None  # next request starts another for what waits

    def _batch(self) -> bool:
        """Decrypt and answer every cryptogram waiting; False once closed. (A function
        of its own: the cards of a batch are not kept in its locals until the next.)"""
        jobs = [self._jobs.get()]
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        answers: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        for job in jobs:
            if job is None:  # closed: what was asked before is still answered
                continue
            private_key, text, future = job
            try:
                done: _Done = (future, decrypt(private_key, text), None)
            except Exception as exc:  # CryptogramError, or a fault to pass on
                done = (future, None, exc)
            except BaseException as exc:  # a panic in the bindings: its request fails
                failure = RuntimeError(f"decryption failed ({type(exc).__name__})")
                done = (future, None, failure)
            answers.setdefault(future.get_loop(), []).append(done)
        for loop, done_here in answers.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(_answer, done_here)
        return None not in jobs

    def close(self) -> None:
        """Stop the thread once it has answered what it was asked (at most 5 s)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join(timeout=5)


def _answer(answers: list[_Done]) -> None:
    for future, card, exc in answers:
        if future.done():  # its request was cancelled meanwhile
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(card)  # type: ignore[arg-type]


#: A cgroup v2 CPU limit: "QUOTA PERIOD" (microseconds), or "max PERIOD" for none.
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may use: those it may run on, fewer if its cgroup (a
    container's CPU limit) allows it less time than that."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):  # no cgroup v2 limit: as above
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def wanted(setting: Literal["auto", "on", "off"], workers: int) -> bool:
    """Whether a worker decrypts in a side thread: ``auto`` when the workers are fewer
    than the cores they may use (each then has one to spare)."""
    if setting == "auto":
        return workers < usable_cores()
    return setting == "on"
