"""A shop's postLink receiver for the benchmark: asyncio, raw HTTP/1.1, keep-alive.

    python bench/receiver.py PORT

Every POST is answered ``200 OK`` at once; the wall-clock time it arrived (``time.time()``,
taken when the whole body is in) is kept with the body's ``invoiceId``. ``GET /arrivals``
answers them all as JSON ``[[invoiceId, unix_time], ...]`` (a repeated postLink appears
twice). It prints ``ready`` when it listens. Runs in its own process, so that tolem's
delivery worker and the load generator don't share its event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"

arrivals: list[tuple[str, float]] = []


def _invoice(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("invoiceId", "")) if isinstance(data, dict) else ""


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            body = b""
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    body += await reader.readexactly(size + 2)
                    if size == 0:
                        break
                body = body[:-2]
            elif length:
                body = await reader.readexactly(length)
            at = time.time()
            if method == b"GET" and rest.startswith(b"/arrivals"):
                payload = json.dumps(arrivals).encode()
                header = f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n"
                writer.write(header.encode() + b"Content-Type: application/json\r\n\r\n" + payload)
            else:
                arrivals.append((_invoice(body), at))
                writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
