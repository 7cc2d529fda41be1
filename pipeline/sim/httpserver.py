"""A small, fast HTTP/1.1 server connection on `asyncio.Protocol`.

Supports keep-alive, pipelined requests (answered in order), `Content-Length` request bodies
(up to `MAX_BODY` bytes), `Expect: 100-continue`, `Connection: close`, fixed-length responses
and chunked streaming responses. Each connection runs one handler at a time; when the peer
closes (EOF or error) the running handler task is cancelled, so a request waiting in a queue
leaves it at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

_log = logging.getLogger(__name__)

MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


@dataclass(slots=True)
class HttpRequest:
    """One parsed request; header names are lower-case, `path` has no query string."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


Handler = Callable[[HttpRequest, "HttpConnection"], Awaitable[None]]


class BadRequest(Exception):
    """The bytes received are not a request this server accepts."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpConnection(asyncio.Protocol):
    """One client connection; calls `handler` for each request, one after the other."""

    def __init__(self, handler: Handler, registry: set[HttpConnection]) -> None:
        self._handler = handler
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: tuple[str, str, str, dict[str, str], bool, int] | None = None
        self._pending: deque[HttpRequest] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._parse_one():
                pass
        except BadRequest as exc:
            self._fail(exc.status, str(exc))
            return
        if self._pending and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def eof_received(self) -> bool | None:
        return None  # close the transport: the client has gone away

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        if self._worker is not None:
            self._worker.cancel()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # -- parsing ------------------------------------------------------------------------------
    def _parse_one(self) -> bool:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER:
                    raise BadRequest(431, "request header too large")
                return False
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if self._head[3].get("expect", "").lower() == "100-continue" and self._transport:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, path, query, headers, keep_alive, length = self._head
        if len(self._buffer) < length:
            return False
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._head = None
        self._pending.append(HttpRequest(method, path, query, headers, body, keep_alive))
        return True

    def _fail(self, status: int, message: str) -> None:
        self.send(status, f'{{"detail":"{message}"}}'.encode(), keep_alive=False)
        self._buffer.clear()

    async def _work(self) -> None:
        try:
            while self._pending and not self.closed:
                request = self._pending.popleft()
                try:
                    await self._handler(request, self)
                except ConnectionError:
                    return
                except Exception:
                    _log.exception(
                        "simulator handler failed for %s %s", request.method, request.path
                    )
                    self.send(500, b'{"detail":"simulator bug"}', keep_alive=False)
                    return
                if not request.keep_alive:
                    self.close()
                    return
        finally:
            self._worker = None

    # -- writing ------------------------------------------------------------------------------
    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
        *,
        keep_alive: bool = True,
    ) -> None:
        """Write one complete fixed-length response."""
        head = self._head_lines(status, content_type, headers, keep_alive)
        head.append(f"content-length: {len(body)}\r\n\r\n")
        self.write("".join(head).encode("latin-1") + body)
        if not keep_alive:
            self.close()

    def start_chunked(self, status: int, content_type: str) -> None:
        """Write the head of a chunked response; follow with `write_chunk` and `end_chunked`."""
        head = self._head_lines(status, content_type, (), True)
        head.append("transfer-encoding: chunked\r\n\r\n")
        self.write("".join(head).encode("latin-1"))

    async def write_chunk(self, data: bytes) -> None:
        if data:
            self.write(b"%x\r\n%b\r\n" % (len(data), data))
            await self.drain()

    def end_chunked(self) -> None:
        self.write(b"0\r\n\r\n")

    def _head_lines(
        self, status: int, content_type: str, headers: tuple[tuple[str, str], ...], keep: bool
    ) -> list[str]:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n",
            f"date: {_http_date()}\r\nserver: vllm-sim\r\n",
            f"content-type: {content_type}\r\n",
        ]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if not keep:
            lines.append("connection: close\r\n")
        return lines

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("connection closed")
        if self._paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Close after flushing what was written."""
        if self._transport is not None:
            self._transport.close()

    def abort(self, *, rst: bool = True) -> None:
        """Drop the connection now, without flushing; with `rst` the peer gets a TCP reset."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()


def _parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str], bool, int]:
    try:
        text = raw.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(505, "HTTP version not supported")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(501, "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad content-length") from None
    if length < 0:
        raise BadRequest(400, "bad content-length")
    if length > MAX_BODY:
        raise BadRequest(413, "request body too large")
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
    path, _, query = target.partition("?")
    return method.upper(), path, query, headers, keep_alive, length
