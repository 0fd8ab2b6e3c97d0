"""Cryptograms decrypted in a thread beside the event loop (tolem.payments.cryptogram.
SideDecrypter, TOLEM_DECRYPT_THREAD): the same answers and errors as on the loop, the
loop free meanwhile, every waiting request answered at shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support import TERMINAL, cryptopay, encrypt, new_invoice, served_in_a_thread, token
from tolem.app import create_app
from tolem.config import Settings
from tolem.payments import cryptogram, endpoints
from tolem.payments.cryptogram import CryptogramError, SideDecrypter, decrypt
from tolem.processor.base import Card

CARD = {"hpan": "4405639704015096", "expDate": "0125", "cvc": "815", "terminalId": "t-1"}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sealed(key: rsa.RSAPrivateKey, data: dict[str, Any] | bytes) -> str:
    plain = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.b64encode(key.public_key().encrypt(plain, padding.PKCS1v15())).decode()


@pytest.fixture
def threads_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that decrypted, whichever way they were called."""
    seen: list[str] = []

    def recorded(private_key: Any, text: str) -> tuple[Card, str]:
        seen.append(threading.current_thread().name)
        return decrypt(private_key, text)

    monkeypatch.setattr(cryptogram, "decrypt", recorded)
    monkeypatch.setattr(endpoints, "decrypt", recorded)
    return seen


@pytest.fixture
def side() -> Iterator[SideDecrypter]:
    decrypter = SideDecrypter()
    yield decrypter
    decrypter.close()


def test_answers_as_decrypt_does_from_a_thread_of_its_own(
    key: rsa.RSAPrivateKey, side: SideDecrypter, threads_seen: list[str]
) -> None:
    text = sealed(key, CARD)

    async def main() -> tuple[Card, str]:
        return await side.decrypt(key, text)

    assert asyncio.run(main()) == decrypt(key, text)
    assert threads_seen == ["tolem-decrypt"]


def test_a_bad_cryptogram_raises_what_decrypt_raises(
    key: rsa.RSAPrivateKey, side: SideDecrypter
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    texts = ["not base64!", sealed(other, CARD), sealed(key, b"[1]"), sealed(key, {"hpan": "1"})]

    async def main() -> list[BaseException | tuple[Card, str]]:
        return await asyncio.gather(
            *(side.decrypt(key, text) for text in texts), return_exceptions=True
        )

    for text, answer in zip(texts, asyncio.run(main()), strict=True):
        with pytest.raises(CryptogramError) as inline:
            decrypt(key, text)
        assert isinstance(answer, CryptogramError)
        assert str(answer) == str(inline.value)


def test_the_loop_runs_while_the_thread_decrypts(
    key: rsa.RSAPrivateKey, side: SideDecrypter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow(private_key: Any, text: str) -> tuple[Card, str]:
        time.sleep(0.02)  # lets go of the GIL, as OpenSSL does while it decrypts
        return decrypt(private_key, text)

    monkeypatch.setattr(cryptogram, "decrypt", slow)
    texts = [sealed(key, {**CARD, "terminalId": f"t-{n}"}) for n in range(10)]

    async def main() -> tuple[list[str], int]:
        ticks = 0
        answers = asyncio.ensure_future(
            asyncio.gather(*(side.decrypt(key, text) for text in texts))
        )
        while not answers.done():
            ticks += 1
            await asyncio.sleep(0.001)
        return [terminal for _card, terminal in answers.result()], ticks

    terminals, ticks = asyncio.run(main())
    assert terminals == [f"t-{n}" for n in range(10)]  # each its own answer, in order
    assert ticks >= 50, ticks  # 0.2 s of decryption, the loop free throughout


def test_several_loops_share_one_thread(key: rsa.RSAPrivateKey, side: SideDecrypter) -> None:
    answers: dict[int, list[str]] = {}

    def loop_of_its_own(n: int) -> None:
        texts = [sealed(key, {**CARD, "terminalId": f"{n}-{i}"}) for i in range(5)]

        async def main() -> list[tuple[Card, str]]:
            return await asyncio.gather(*(side.decrypt(key, text) for text in texts))

        answers[n] = [terminal for _card, terminal in asyncio.run(main())]

    threads = [threading.Thread(target=loop_of_its_own, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == {n: [f"{n}-{i}" for i in range(5)] for n in range(3)}
    assert [t.name for t in threading.enumerate()].count("tolem-decrypt") == 1


def test_a_cancelled_request_is_left_out_and_close_answers_the_rest(
    key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = SideDecrypter()
    started = threading.Event()

    def slow(private_key: Any, text: str) -> tuple[Card, str]:
        started.set()
        time.sleep(0.05)
        return decrypt(private_key, text)

    monkeypatch.setattr(cryptogram, "decrypt", slow)
    texts = [sealed(key, {**CARD, "terminalId": f"t-{n}"}) for n in range(4)]

    async def main() -> list[Any]:
        jobs = [asyncio.ensure_future(side.decrypt(key, text)) for text in texts]
        await asyncio.sleep(0)  # all four are queued
        jobs[1].cancel()
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        # Closing waits for the thread: run it beside the loop, which takes the answers.
        await asyncio.get_running_loop().run_in_executor(None, side.close)
        return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 10)

    answers = asyncio.run(main())
    assert isinstance(answers[1], asyncio.CancelledError)
    assert [a[1] for i, a in enumerate(answers) if i != 1] == ["t-0", "t-2", "t-3"]
    assert "tolem-decrypt" not in [t.name for t in threading.enumerate()]

    async def after_close() -> None:
        await side.decrypt(key, texts[0])

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(after_close())


@pytest.mark.parametrize(
    ("setting", "workers", "cores", "wanted"),
    [
        ("auto", 1, 2, True),
        ("auto", 3, 4, True),
        ("auto", 2, 2, False),
        ("auto", 1, 1, False),
        ("on", 4, 2, True),
        ("off", 1, 8, False),
    ],
)
def test_auto_decrypts_beside_the_loop_when_a_core_is_spare(
    monkeypatch: pytest.MonkeyPatch,
    setting: Literal["auto", "on", "off"],
    workers: int,
    cores: int,
    wanted: bool,
) -> None:
    monkeypatch.setattr(cryptogram, "usable_cores", lambda: cores)
    assert cryptogram.wanted(setting, workers) is wanted


def test_the_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="decrypt_thread"):
        Settings(decrypt_thread="sometimes")


@pytest.mark.parametrize("setting", ["on", "off"])
def test_cryptopay_decrypts_where_the_setting_says(
    tmp_path: Path, threads_seen: list[str], setting: Literal["on", "off"]
) -> None:
    """Over real HTTP, a payment and a bad cryptogram answer the same either way; only
    the thread that decrypted differs; the thread is gone once the gateway stops."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'tolem.db'}",
        postlink_worker=False,
        decrypt_thread=setting,
    )
    answers = []
    with served_in_a_thread(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        public = serialization.load_pem_public_key(client.get("/public.rsa").content)
        assert isinstance(public, rsa.RSAPublicKey)
        for card in (CARD | {"terminalId": TERMINAL}, {"hpan": "1"}):
            invoice = new_invoice()
            access = token(client, invoice=invoice)["access_token"]
            body = {
                "amount": 100,
                "currency": "KZT",
                "name": "JON JONSON",
                "invoiceId": invoice,
                "description": "side decrypter",
                "cryptogram": encrypt(public, card),
            }
            answers.append(cryptopay(client, access, body))
    paid, refused = answers
    assert paid.status_code == 200, paid.text
    assert (paid.json()["code"], paid.json()["cardMask"]) == (0, "440563...5096")
    assert refused.status_code == 400
    assert refused.json()["code"] == 477
    assert "hpan" in refused.json()["message"]
    on_the_side = [name == "tolem-decrypt" for name in threads_seen]
    assert on_the_side == ([True, True] if setting == "on" else [False, False])
    assert "tolem-decrypt" not in [t.name for t in threading.enumerate()]


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [("max 100000\n", 8), ("100000 100000\n", 1), ("150000 100000", 2), ("50000 100000", 1),
     ("900000 100000", 8), ("garbage", 8)],
)  # fmt: skip
def test_a_containers_cpu_limit_counts_as_fewer_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, cores: int
) -> None:
    monkeypatch.setattr(cryptogram.os, "sched_getaffinity", lambda _pid: set(range(8)))
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    assert cryptogram.usable_cores(limit) == cores
    assert cryptogram.usable_cores(tmp_path / "absent") == 8


def test_a_panic_in_the_bindings_fails_its_request_only(
    key: rsa.RSAPrivateKey, side: SideDecrypter, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Panic(BaseException):  # what pyo3 raises for a panic in Rust code
        pass

    def panicky(private_key: Any, text: str) -> tuple[Card, str]:
        if text == "panic":
            raise Panic("boom")
        return decrypt(private_key, text)

    monkeypatch.setattr(cryptogram, "decrypt", panicky)
    good = sealed(key, CARD)

    async def main() -> list[Any]:
        return await asyncio.wait_for(
            asyncio.gather(
                side.decrypt(key, "panic"), side.decrypt(key, good), return_exceptions=True
            ),
            10,
        )

    failed, paid = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and "Panic" in str(failed)
    assert paid == decrypt(key, good)

    async def again() -> tuple[Card, str]:  # the thread lives on
        return await asyncio.wait_for(side.decrypt(key, good), 10)

    assert asyncio.run(again()) == decrypt(key, good)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_dies_is_replaced_and_what_waited_is_answered(
    key: rsa.RSAPrivateKey, side: SideDecrypter, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = side._batch

    def dies() -> bool:
        monkeypatch.setattr(side, "_batch", batch)  # the next thread works
        raise RuntimeError("the thread's own fault")

    monkeypatch.setattr(side, "_batch", dies)
    good = sealed(key, CARD)

    async def main() -> tuple[Any, Any]:
        first = asyncio.ensure_future(side.decrypt(key, good))
        for _ in range(500):  # until the first thread has died
            await asyncio.sleep(0.01)
            if side._thread is None:
                break
        assert side._thread is None
        second = await asyncio.wait_for(side.decrypt(key, good), 10)
        return await asyncio.wait_for(first, 10), second

    assert asyncio.run(main()) == (decrypt(key, good), decrypt(key, good))
