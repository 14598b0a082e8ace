"""The upstream HTTP/1.1 client against hand-written servers: framing, reuse, faults, timeouts, TLS."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import http1

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RELAXED = http1.Deadlines(connect=5, first_byte=5, idle=5, total=10)


class Server:
    """A raw TCP server that answers each request with `answer`; counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> http1.Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if ssl_context else "http"
        return http1.Origin.parse(f"{scheme}://127.0.0.1:{port}/v1")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def pool() -> AsyncIterator[http1.Http1Pool]:
    pool = http1.Http1Pool()
    yield pool
    await pool.aclose()


def reply(body: bytes, *headers: str, status: str = "200 OK") -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return answer


async def get(pool: http1.Http1Pool, origin: http1.Origin, deadlines: http1.Deadlines = RELAXED,
              headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    response = await pool.request(origin, "POST", origin.prefix + "/chat/completions",
                                  headers or [("Content-Type", "application/json")], b"{}", deadlines)
    body = await response.read()
    response.release()
    return response.status, body


async def test_sequential_requests_reuse_one_connection(pool: http1.Http1Pool) -> None:
    server = Server(reply(b'{"ok":true}', "Content-Type: application/json"))
    origin = await server.start()
    for _ in range(5):
        assert await get(pool, origin) == (200, b'{"ok":true}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{origin.port}".encode() in first


async def test_chunked_and_gzip_bodies_are_decoded(pool: http1.Http1Pool) -> None:
    packed = gzip.compress(b"x" * 5000)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n")
        for start in range(0, len(packed), 7):
            piece = packed[start:start + 7]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    origin = await Server(answer).start()
    assert await get(pool, origin) == (200, b"x" * 5000)


async def test_a_body_without_length_ends_with_the_connection(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server = Server(answer)
    origin = await server.start()
    assert await get(pool, origin) == (200, b"all of it")
    assert await get(pool, origin) == (200, b"all of it")
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_reused(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reply(b"ok")(reader, writer)
        writer.close()  # keep-alive advertised, then closed while idle

    server = Server(answer)
    origin = await server.start()
    assert await get(pool, origin) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert await get(pool, origin) == (200, b"ok")
    assert server.connections == 2


async def test_interim_answers_are_skipped(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        await reply(b"final", "X-Real: yes")(reader, writer)

    origin = await Server(answer).start()
    response = await pool.request(origin, "POST", "/", [], b"", RELAXED)
    assert response.status == 200 and response.headers["X-Real"] == "yes"
    assert "Link" not in response.headers
    assert await response.read() == b"final"


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6))
def test_a_large_stream_arrives_whole_and_in_order(sizes: list[int]) -> None:
    body = b"".join(bytes([i % 251]) * size for i, size in enumerate(sizes))

    async def scenario() -> bytes:
        pool = http1.Http1Pool()
        origin = await Server(reply(body)).start()
        try:
            response = await pool.request(origin, "POST", "/", [], b"", RELAXED)
            parts = []
            async for part in response.iter_any():
                parts.append(part)
                await asyncio.sleep(0)  # a slow reader: the connection pauses and resumes
            response.release()
            return b"".join(parts)
        finally:
            await pool.aclose()

    assert asyncio.run(scenario()) == body


async def test_a_server_that_never_answers_times_out_at_first_byte(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    origin = await Server(answer).start()
    deadlines = http1.Deadlines(connect=5, first_byte=0.2, idle=5, total=10)
    with pytest.raises(http1.PhaseTimeout) as caught:
        await get(pool, origin, deadlines)
    assert caught.value.phase == "first_byte"


async def test_a_silent_stream_times_out_idle_and_a_long_one_total(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            writer.write(b"1\r\na\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    origin = await Server(answer).start()
    for deadlines, phase in ((http1.Deadlines(5, 5, 0.05, 10), "idle"),
                             (http1.Deadlines(5, 5, 1, 0.3), "total")):
        response = await pool.request(origin, "POST", "/", [], b"", deadlines)
        with pytest.raises(http1.PhaseTimeout) as caught:
            async for _ in response.iter_any():
                pass
        assert caught.value.phase == phase


async def test_a_reset_mid_body_is_a_disconnect(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    origin = await Server(answer).start()
    with pytest.raises(http1.Disconnected):
        await get(pool, origin)


async def test_garbage_is_a_malformed_response(pool: http1.Http1Pool) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    origin = await Server(answer).start()
    with pytest.raises(http1.MalformedResponse):
        await get(pool, origin)


async def test_refused_connection_is_connect_failed(pool: http1.Http1Pool) -> None:
    with pytest.raises(http1.ConnectFailed):
        await get(pool, http1.Origin.parse("http://127.0.0.1:9/v1"))


async def test_header_values_cannot_inject_lines(pool: http1.Http1Pool) -> None:
    server = Server(reply(b"ok"))
    origin = await server.start()
    with pytest.raises(ValueError, match="line break"):
        await get(pool, origin, headers=[("X-Evil", "a\r\nInjected: yes")])
    assert server.requests == []


def test_origin_of_base_urls() -> None:
    assert http1.Origin.parse("https://api.openai.com/v1") == http1.Origin(
        True, "api.openai.com", 443, "/v1", "api.openai.com", "https://api.openai.com:443")
    # upstreams on one server share its connections, whatever their paths
    assert http1.Origin.parse("http://h:8000/a/v1").key == http1.Origin.parse("http://h:8000/v1").key
    assert http1.Origin.parse("http://h:8000/v1").key != http1.Origin.parse("https://h:8000/v1").key
    assert http1.Origin.parse("http://[::1]:8000/openai/v1/").host_header == "[::1]:8000"
    assert http1.Origin.parse("http://local:80").prefix == ""


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_upstream_with_a_trusted_certificate(certificate: tuple[Path, Path],
                                                       pool: http1.Http1Pool) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    origin = await Server(reply(b"secret")).start(server_side)
    with pytest.raises(http1.ConnectFailed):  # not trusted by default
        await get(pool, origin)
    trusting = http1.Http1Pool(ssl.create_default_context(cafile=str(cert)))
    try:
        assert await get(trusting, origin) == (200, b"secret")
    finally:
        await trusting.aclose()
