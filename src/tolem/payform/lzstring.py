"""LZString's URI-safe format (``compressToEncodedURIComponent``), bounded and UTF-16-exact.

The hosted payment page receives the merchant's parameters in ``params``, compressed in
the browser by lz-string 1.5.0 (vendored in ``static/lz-string.min.js``). This is our own
port instead of the PyPI ``lzstring`` package for two reasons:

* Safety: LZ output can grow quadratically with its input (a few KB of ``params`` can
  decode to tens of MB), and ``params`` is attacker-controlled. The decoder here refuses
  input over 32768 characters and stops as soon as the output would pass ``max_output``,
  so time and memory stay proportional to ``max_output + len(data)``. Every malformed
  input raises :class:`LZStringError`, never anything else.
* Exactness: JavaScript strings are UTF-16, and lz-string works on UTF-16 code units. We
  do the same (a character outside the BMP is two surrogate units), so our output is
  byte-identical to the JS library's, and JS output decodes to the exact Python string.
"""

from __future__ import annotations

__all__ = [
    "LZStringError",
    "compress_to_encoded_uri_component",
    "decompress_from_encoded_uri_component",
]

# lz-string's alphabet string ends "+-$", but 6 bits only reach "-": "$" is never written,
# and JS would read it as "A". We refuse it like any other foreign character.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-"
_VALUES = {char: value for value, char in enumerate(_ALPHABET)}
_BITS = 6  # bits per output character
MAX_INPUT = 32768
_PROTO = "__proto__"


class LZStringError(ValueError):
    """The data is not a well-formed LZString stream, or decodes to too much."""


def _to_units(text: str) -> str:
    """``text`` as a str of UTF-16 code units, one per character, as JavaScript sees it."""
    if text.isascii() or max(text) < "\U00010000":
        return text
    data = text.encode("utf-16-le", "surrogatepass")
    return "".join(chr(data[i] | data[i + 1] << 8) for i in range(0, len(data), 2))


def _from_units(units: str) -> str:
    """Re-join surrogate pairs; a lone surrogate is no text a browser could have sent."""
    try:
        return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise LZStringError("decoded text holds a lone UTF-16 surrogate") from exc


class _BitWriter:
    """Values go in least significant bit first; characters fill most significant first."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.value = 0
        self.position = 0

    def write(self, value: int, bits: int) -> None:
        for _ in range(bits):
            self.value = self.value << 1 | value & 1
            value >>= 1
            self.position += 1
            if self.position == _BITS:
                self.chars.append(_ALPHABET[self.value])
                self.value = self.position = 0

    def finish(self) -> str:
        # Like JS, always pad: 1 to 6 zero bits (a whole "A" if the last character is full).
        self.chars.append(_ALPHABET[self.value << (_BITS - self.position)])
        return "".join(self.chars)


def compress_to_encoded_uri_component(text: str) -> str:
    """What lz-string's ``compressToEncodedURIComponent(text)`` returns, character for character."""
    out = _BitWriter()
    num_bits, enlarge_in, size = 2, 2, 3  # codes 0, 1, 2: 8-bit literal, 16-bit literal, end
    singles: dict[str, int] = {}  # code unit -> its code
    pending: dict[int, str] = {}  # codes of single units whose literal is not yet sent
    children: dict[tuple[int, str], int] = {}  # (code of phrase w, unit c) -> code of w + c
    proto: dict[int, int] = {}  # codes of the phrases "_", "__", ..., "__proto_" -> length

    def tick() -> None:
        nonlocal num_bits, enlarge_in
        enlarge_in -= 1
        if enlarge_in == 0:
            enlarge_in = 1 << num_bits
            num_bits += 1

    def emit(code: int) -> None:
        unit = pending.pop(code, None)
        if unit is None:
            out.write(code, num_bits)
        else:
            wide = ord(unit) > 0xFF
            out.write(int(wide), num_bits)
            out.write(ord(unit), 16 if wide else 8)
            tick()
        tick()

    w = -1  # the code of the current phrase; -1: none yet
    for c in _to_units(text):
        if c not in singles:
            singles[c] = size
            pending[size] = c
            if c == "_":
                proto[size] = 1
            size += 1
        if w < 0:
            w = singles[c]
            continue
        code = children.get((w, c))
        if code is not None:
            w = code
            continue
        emit(w)
        # JS keys its dictionary by plain-object property: `dict["__proto__"] = n` is a
        # no-op there, so that phrase takes a code but is never matched. Do the same.
        length = proto.get(w, 0)
        length = length + 1 if length and c == _PROTO[length] else 0
        if length != len(_PROTO):
            children[(w, c)] = size
            if length:
                proto[size] = length
        size += 1
        w = singles[c]
    if w >= 0:
        emit(w)
    out.write(2, num_bits)
    return out.finish()


def decompress_from_encoded_uri_component(data: str, *, max_output: int = 65536) -> str:
    """Decode lz-string's ``compressToEncodedURIComponent`` output.

    Raises :class:`LZStringError` for any malformed ``data``, for ``data`` longer than
    32768 characters, and as soon as the output would pass ``max_output`` UTF-16 code units
    (JavaScript's ``String.length``: a character outside the BMP counts 2).
    """
    if not data:
        raise LZStringError("empty data")
    if len(data) > MAX_INPUT:
        raise LZStringError(f"data longer than {MAX_INPUT} characters")
    try:
        # A "+" in a URL query often arrives as a space: JS undoes that too.
        stream = "".join(format(_VALUES[char], "06b") for char in data.replace(" ", "+"))
    except KeyError as exc:
        raise LZStringError(f"character outside the alphabet: {exc.args[0]!r}") from None
    position = 0

    def read(bits: int) -> int:
        nonlocal position
        chunk = stream[position : position + bits]
        if len(chunk) < bits:
            raise LZStringError("truncated data: no end marker")
        position += bits
        return int(chunk[::-1], 2)  # values are stored least significant bit first

    def literal(kind: int) -> str:
        return chr(read(8 if kind == 0 else 16))

    def finish(result: list[str]) -> str:
        # What lz-string writes after the end marker: 1 to 6 zero bits of padding, no more.
        if not 0 < len(stream) - position <= _BITS or "1" in stream[position:]:
            raise LZStringError("data after the end marker")
        return _from_units("".join(result))

    first = read(2)
    if first == 2:
        return finish([])  # the encoding of ""
    if first == 3:
        raise LZStringError("data does not start with a literal")
    w = literal(first)
    dictionary: list[str] = ["", "", "", w]  # codes 0-2 are commands, not phrases
    num_bits, enlarge_in = 3, 4
    result, total = [w], 1
    if total > max_output:
        raise LZStringError(f"decoded text longer than {max_output} characters")
    while True:
        code = read(num_bits)
        if code == 2:
            return finish(result)
        if code < 2:
            dictionary.append(literal(code))
            code = len(dictionary) - 1
            enlarge_in -= 1
            if enlarge_in == 0:
                enlarge_in, num_bits = 1 << num_bits, num_bits + 1
        if code < len(dictionary):
            length = len(dictionary[code])
        elif code == len(dictionary):
            length = len(w) + 1  # the phrase being defined: w + w[0]
        else:
            raise LZStringError(f"reference to phrase {code}, which does not exist")
        # Check before building anything: the new phrase below is at most len(w) + 1 <=
        # total + 1, so the dictionary is bounded by the output too.
        total += length
        if total > max_output:
            raise LZStringError(f"decoded text longer than {max_output} characters")
        entry = dictionary[code] if code < len(dictionary) else w + w[0]
        result.append(entry)
        dictionary.append(w + entry[0])
        w = entry
        enlarge_in -= 1
        if enlarge_in == 0:
            enlarge_in, num_bits = 1 << num_bits, num_bits + 1
