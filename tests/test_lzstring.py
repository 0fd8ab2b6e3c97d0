"""tolem.payform.lzstring: the same bytes as the real lz-string, and bounded on hostile input."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

import tolem.payform
from tests.browser import chromium
from tolem.payform.lzstring import LZStringError
from tolem.payform.lzstring import compress_to_encoded_uri_component as compress
from tolem.payform.lzstring import decompress_from_encoded_uri_component as decompress

STATIC = Path(tolem.payform.__file__).resolve().parent / "static"
VENDORED = STATIC / "lz-string.min.js"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-"

# ASCII, Russian, Kazakh, CJK, a BMP edge, and characters outside the BMP (surrogate pairs).
POOL = "az09 &=+%/?#_Оплатаөқғүұңһі中文\uffff😀👍🏽🇰🇿\U0010ffff"


def random_text(rng: random.Random, length: int) -> str:
    chars = []
    for _ in range(length):
        kind = rng.randrange(4)
        if kind == 0:
            chars.append(rng.choice(POOL))
        elif kind == 1:
            chars.append(chr(rng.randrange(0x20, 0x7F)))
        elif kind == 2:  # anywhere in the BMP but the surrogates
            chars.append(chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x10000)])))
        else:
            chars.append(chr(rng.randrange(0x10000, 0x110000)))
    return "".join(chars)


CROSS_CHECK = [
    "Hello, world!",
    "Оплата в интернет магазине",
    "Төлем қабылданды",
    "😀👍🏽",
    "&=+%/ ?#" * 3,
    "",
    "a",
    "invoiceId=000000001&auth=access_token%3Dabc%26expires_in%3D7200",
    '{"invoiceId":"000000001","amount":100,"description":"Төлем 😀"}',
    # A plain JS object as lz-string's dictionary cannot hold the key "__proto__".
    "a__proto__" * 40 + "Оплата__proto__" * 10,
    random_text(random.Random(5000), 5000),
]


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with chromium() as browser:
        page = browser.new_page()
        page.add_script_tag(path=str(VENDORED))
        yield page


def test_the_vendored_library_is_lz_string_1_5_0_with_its_license() -> None:
    first, rest = VENDORED.read_text(encoding="utf-8").split("\n", 1)
    assert first == (
        "/* lz-string 1.5.0 (npm), MIT License, Copyright (c) 2013 pieroxy; "
        "see LICENSE.lz-string */"
    )
    assert rest.startswith("var LZString=function(){")
    license_text = (STATIC / "LICENSE.lz-string").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n\nCopyright (c) 2013 pieroxy\n")


def test_same_output_as_the_real_lz_string_in_chromium(page: Page) -> None:
    ours = [compress(text) for text in CROSS_CHECK]
    js = page.evaluate(
        """([texts, ours]) => ({
            compressed: texts.map((t) => LZString.compressToEncodedURIComponent(t)),
            decompressed: ours.map((c) => LZString.decompressFromEncodedURIComponent(c)),
        })""",
        [CROSS_CHECK, ours],
    )
    assert ours == js["compressed"]
    assert js["decompressed"] == CROSS_CHECK
    assert [decompress(c) for c in js["compressed"]] == CROSS_CHECK


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # from lz-string 1.5.0 under Node
        ("", "Q"),
        ("a", "IZA"),
        ("Hello, world!", "BIUwNmD2A0AEDukBOYAmBCIA"),
        ("Төлем қабылданды", "kQgkuQTcIIrCCDwgAEjZIIBhBCMIIaRAyBYQBheEHSoA"),
        ("😀👍🏽", "rwbgA96WR3B4Nxf-aA"),
        ("a" * 67, "IY18ZXTvEA"),
    ],
)
def test_known_outputs(text: str, expected: str) -> None:
    assert compress(text) == expected
    assert decompress(expected) == text


def test_works_on_utf16_code_units() -> None:
    # "😀" is the pair D83D DE00 to JavaScript: the same stream as the two units apart.
    assert compress("😀") == compress("\ud83d\ude00")
    assert decompress(compress("😀")) == "😀"
    assert len(decompress(compress("x😀y" * 50))) == 150
    with pytest.raises(LZStringError, match="lone UTF-16 surrogate"):
        decompress(compress("a\ud800b"))
    with pytest.raises(LZStringError, match="lone UTF-16 surrogate"):
        decompress(compress("\ude00\ud83d"))  # the pair in the wrong order


def test_random_round_trips() -> None:
    rng = random.Random(20240601)
    for _ in range(400):
        text = random_text(rng, rng.choice([1, 2, 10, 100, 1000]))
        data = compress(text)
        assert set(data) <= set(ALPHABET)
        assert decompress(data, max_output=2 * len(text)) == text
    for _ in range(200):  # few distinct characters: long phrases, back-references
        text = "".join(rng.choice("ab😀") for _ in range(rng.randrange(2000)))
        assert decompress(compress(text), max_output=4000) == text


def test_a_space_in_place_of_plus_decodes() -> None:
    text = "terminal" + "Оплата"  # one whose encoding holds a "+"
    data = compress(text)
    assert data == "C4UwTgtglgdghgG0Hggh+EENwggGEEEIgGg"
    assert decompress(data.replace("+", " ")) == text


@pytest.mark.parametrize(
    "data",
    [
        "",
        "!!!",
        "N4Ig",  # a valid start, then no end marker
        "$$$$$$$$",  # "$" ends lz-string's alphabet string but is never written
        "IZA=",
        "IZA%2B",
        "IZ A",  # "+" in place of "Z" is still a broken stream
        "IZAA",  # the padding of "a", then a whole character more
        "IZB",  # a 1 bit in the padding
        "/w",
        "w",  # first code 3: neither a literal nor the end
        "IYA",  # a back-reference to a phrase that does not exist
        "A" * 32769,  # refused before decoding
    ],
)
def test_malformed_inputs_raise_lzstring_error(data: str) -> None:
    with pytest.raises(LZStringError):
        decompress(data)


def test_every_truncation_raises() -> None:
    for text in ["a", "Оплата в интернет магазине", random_text(random.Random(7), 300)]:
        data = compress(text)
        assert decompress(data) == text
        for end in range(len(data)):
            with pytest.raises(LZStringError):
                decompress(data[:end])


def test_random_garbage_raises_only_lzstring_error() -> None:
    rng = random.Random(1)
    valid = compress(random_text(rng, 200))
    refused = decoded = 0
    for i in range(4000):
        if i % 2:
            data = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 80)))
        else:  # one character of a valid stream changed
            at = rng.randrange(len(valid))
            data = valid[:at] + rng.choice(ALPHABET) + valid[at + 1 :]
        try:
            result = decompress(data, max_output=10_000)
        except LZStringError:
            refused += 1
        else:
            assert isinstance(result, str)
            decoded += 1
    # A changed character can still decode (to different text); pure noise almost never.
    assert refused > 2500
    assert refused + decoded == 4000


def test_a_decompression_bomb_is_refused_fast() -> None:
    bomb = compress("a" * 2_000_000)
    assert len(bomb) < 4000  # 2 MB of output from under 4 KB of input
    started = time.perf_counter()
    with pytest.raises(LZStringError, match="longer than 65536"):
        decompress(bomb)
    assert time.perf_counter() - started < 0.1
    assert decompress(bomb, max_output=2_000_000) == "a" * 2_000_000
    with pytest.raises(LZStringError):
        decompress(bomb, max_output=1_999_999)


def test_max_output_counts_utf16_code_units() -> None:
    text = "ab" * 50
    assert decompress(compress(text), max_output=100) == text
    with pytest.raises(LZStringError):
        decompress(compress(text), max_output=99)
    assert decompress(compress("😀" * 10), max_output=20) == "😀" * 10
    with pytest.raises(LZStringError):
        decompress(compress("😀" * 10), max_output=19)
    with pytest.raises(LZStringError):
        decompress("IZA", max_output=0)
