"""TF Serving's REST API over HTTP/1.1: aiohttp's server (the llhttp parser) with hard limits.

`RestServer` puts a `RestApi` (serving/rest_api.py) on a port. aiohttp parses and frames the
requests (strict RFC 9112: malformed or duplicate Content-Length, bad chunk sizes, Content-Length
with Transfer-Encoding are refused by llhttp); this module adds what a server facing any client
needs, each bound a `Limits` field and a flag of the local server:

- the body: over `max_body_bytes` -> 413 before it is read; not complete within
  `body_timeout_s` -> 408; incomplete or badly framed -> 400; never run unless complete;
- the headers: a connection whose request headers are not complete `header_timeout_s` after
  its first byte, or that sends nothing for `idle_timeout_s`, is closed;
- load: at most `max_in_flight` requests past their headers (more -> 503, which clients retry)
  and `max_connections` open connections (more are closed at once); a listen backlog of
  `backlog`;
- stop: stop accepting, close idle connections, answer the requests in flight with
  "Connection: close", and return within `shutdown_deadline_s` whatever the clients do.

Every answer, errors included, is TF Serving's JSON (`{"error": "..."}`); any error that leaves
the framing in doubt closes the connection after the answer. What TF Serving's own HTTP layer
does is done here too: a body whose Content-Encoding names gzip is inflated (the inflated size
is what `max_body_bytes` bounds), `OPTIONS` under /v1/ is a CORS preflight, and with `cors`
every API answer carries TF Serving's Access-Control-* headers. The log gets one line per request
(method, path, status, milliseconds, and for a failure its message, control characters
escaped) and no tracebacks for clients that went away. Request handling (`RestApi.handle`:
JSON parsing, the model call) runs in a thread pool; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import resource
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web, web_protocol
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestHandler

from serving.json_tensor import error_json
from serving.memory import release_freed_memory
from tfserving.errors import escape_controls

log = logging.getLogger(__name__)

MIB = 1 << 20
# Idle this long after the last request, the heap's free pages go back to the kernel.
_TRIM_AFTER_IDLE_S = 2.0
_SWEEP_INTERVAL_S = 0.5
_MAX_LOGGED = 300  # characters of a path or an error message in the log
# Compressed bytes fed to the inflater at a time: what it holds besides the inflated body.
_INFLATE_STEP = 1 << 16
# TF Serving's AddCORSHeaders (http_rest_api_util.cc), sent with --rest_api_enable_cors_support.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_NO_ORIGIN = "Origin header is missing in CORS preflight"

# aiohttp answers a request it could not parse as if it were HTTP/1.0; TF Serving (and the
# old server) say HTTP/1.1, which clients of this API expect.
web_protocol.ERROR = web_protocol.ERROR._replace(version=HttpVersion11)


@dataclass(frozen=True)
class Limits:
    """The bounds a client can't push the server past (see the module's doc)."""

    # The project's client sends a 12 MP photo as ~150 MB of pixel JSON: well inside.
    max_body_bytes: int = 512 * MIB
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 30.0
    backlog: int = 1024
    max_in_flight: int = 64
    max_connections: int = 4096
    # Kubernetes' default grace period is 30 s, then SIGKILL.
    shutdown_deadline_s: float = 20.0


def printable(text: str) -> str:
    """`text` for a log line: control characters (ANSI escapes, newlines) as \\x.., cut short."""
    if len(text) > _MAX_LOGGED:
        text = text[:_MAX_LOGGED] + "...(truncated)"
    return escape_controls(text)


class _Reject(Exception):
    """An answer given before the request reaches the API; the connection is closed after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Connection(RequestHandler):
    """aiohttp's per-connection protocol, with the state the timeouts need."""

    owner: RestServer

    def connection_made(self, transport) -> None:
        self.busy = False  # headers complete, answer not yet written
        self.idle_since = time.monotonic()
        self.first_byte_at: float | None = None  # of a request whose headers are incomplete
        super().connection_made(transport)
        if len(self.owner.http.connections) > self.owner.limits.max_connections:
            self.owner.refused_connections += 1
            self.force_close()

    def data_received(self, data: bytes) -> None:
        if not self.busy and self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        super().data_received(data)

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        """aiohttp's answer to what never reached the handler (a malformed request): JSON."""
        if status == 500:
            text = "Internal error"
            log.error("internal error in the HTTP layer: %r", exc)
        else:
            # llhttp's messages quote the bad line under a caret: keep the first line.
            text = f"Malformed request: {str(message or exc or 'bad HTTP').splitlines()[0]}"
        self.owner.log_request("-", "-", status, 0.0, text)
        response = _json_response(status, error_json(text))
        response.force_close()
        return response


def _json_response(status: int, payload: bytes) -> web.Response:
    response = web.Response(status=status, body=payload)
    if payload:  # a CORS preflight is answered without a body, and TF Serving says no type
        response.headers["Content-Type"] = "application/json"
    # aiohttp sets its name and version unless told otherwise; TF Serving sends no banner.
    response.headers["Server"] = "TF Serving REST stand-in"
    return response


class _HttpServer(web.Server):
    """aiohttp's low-level server, making `_Connection`s."""

    def __init__(self, owner: RestServer, **kwargs) -> None:
        super().__init__(owner.handle_request, **kwargs)
        self.owner = owner

    def __call__(self) -> _Connection:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.owner = self.owner
        return connection


class RestServer:
    """HTTP/1.1 keep-alive server for a RestApi, on an asyncio loop in the calling thread.

    Binds in the constructor (so the caller knows the port is open), serves in
    `serve_forever()`, and `stop()` (safe from a signal handler or any thread) makes it finish.
    """

    def __init__(
        self, address: tuple[str, int], api, limits: Limits | None = None, cors: bool = False
    ) -> None:
        self.api = api
        self.limits = limits or Limits()
        self.cors = cors  # --rest_api_enable_cors_support
        self.stopping = False
        self.in_flight = 0
        self.refused_connections = 0
        self.unfinished = 0  # requests still running when the shutdown deadline passed
        self._workers = ThreadPoolExecutor(self.limits.max_in_flight, thread_name_prefix="request")
        self._loop = asyncio.new_event_loop()
        self._stop_requested = asyncio.Event()
        self._trim_handle: asyncio.TimerHandle | None = None
        _allow_open_files(self.limits.max_connections + 256)
        self._loop.run_until_complete(self._listen(address))

    async def _listen(self, address: tuple[str, int]) -> None:
        self.http = _HttpServer(
            self,
            loop=self._loop,
            access_log=None,  # one line per request is logged here, with the error
            keepalive_timeout=self.limits.idle_timeout_s,
            max_line_size=8190,
            max_field_size=8190,
            # Bodies arrive in steps of this much (aiohttp's default is 64 KB): a 17 MB pixel
            # body took ~90 ms longer than on the old http.server in 64 KB steps, the same in
            # 1 MB ones (side by side, medians of 24).
            read_bufsize=1 << 20,
            # A gzip body is inflated here, bounded by the limit; aiohttp's would not be.
            auto_decompress=False,
        )
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._listener = await self._loop.create_server(
            self.http, sock=sock, backlog=self.limits.backlog
        )
        self.server_address = sock.getsockname()[:2]

    # ---- running and stopping --------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until stop(); then finish the requests in flight (within the deadline)."""
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._close_loop()

    def stop(self) -> None:
        """Ask serve_forever() to finish (from a signal handler or any thread)."""
        self._loop.call_soon_threadsafe(self._stop_requested.set)

    async def _serve(self) -> None:
        sweeper = asyncio.ensure_future(self._sweep())
        await self._stop_requested.wait()
        self.stopping = True
        self._listener.close()  # no new connections
        deadline = time.monotonic() + self.limits.shutdown_deadline_s
        while time.monotonic() < deadline:
            for connection in self.http.connections:
                if not connection.busy:  # idle or still sending its headers
                    connection.force_close()
            if not any(c.busy for c in self.http.connections) and self.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        else:
            self.unfinished = self.in_flight
            log.warning(
                "shutdown deadline of %.0f s passed: closing %d connections with unfinished "
                "requests",
                self.limits.shutdown_deadline_s,
                self.unfinished,
            )
        sweeper.cancel()
        for connection in self.http.connections:
            connection.force_close()
        await asyncio.sleep(0)  # let the closed connections' tasks see it

    def _close_loop(self) -> None:
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()
        # Requests past the deadline may still be parsing: don't wait for them.
        self._workers.shutdown(wait=self.unfinished == 0, cancel_futures=True)

    async def _sweep(self) -> None:
        """Close connections that sit on incomplete headers or idle past their timeouts."""
        limits = self.limits
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            now = time.monotonic()
            slow = idle = 0
            for connection in self.http.connections:
                if connection.busy:
                    continue
                if connection.first_byte_at is not None:
                    if now - connection.first_byte_at > limits.header_timeout_s:
                        connection.force_close()
                        slow += 1
                elif now - connection.idle_since > limits.idle_timeout_s:
                    connection.force_close()
                    idle += 1
            if slow:
                log.warning(
                    "closed %d connections: request headers not complete within %.0f s",
                    slow,
                    limits.header_timeout_s,
                )
            if self.refused_connections:
                log.warning(
                    "refused %d connections: %d open already (--rest_api_max_connections)",
                    self.refused_connections,
                    limits.max_connections,
                )
                self.refused_connections = 0

    # ---- one request -------------------------------------------------------------------------

    async def handle_request(self, request: web.BaseRequest) -> web.Response:
        start = time.perf_counter()
        connection: _Connection = request.protocol
        connection.busy, connection.first_byte_at = True, None
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
        close = False
        try:
            try:
                status, payload, error = await self._answer(request)
                # A refused chunked body: where its last chunk ends is not known for sure.
                close = error is not None and "Transfer-Encoding" in request.headers
            except _Reject as e:
                status, payload, error, close = e.status, error_json(e.message), e.message, True
            except ConnectionError:  # the write below fails quietly too
                status, error, close = 499, "the client went away before the answer", True
                payload = error_json(error)
            response = _json_response(status, payload)
            if self.cors and _is_api_path(request.raw_path):
                response.headers.update(CORS_HEADERS)
            if status == 200:  # the metrics page is text
                response.headers["Content-Type"] = self.api.content_type(request.raw_path)
            if close or self.stopping:
                response.force_close()
            transport = request.transport
            if status != 499 and (transport is None or transport.is_closing()):
                error = f"{error or 'answered'}; the client went away before the answer"
            # Logged before the answer goes out: a client that reads the log once answered
            # finds its line there.
            self.log_request(
                request.method, request.raw_path, status, (time.perf_counter() - start) * 1e3, error
            )
            # Written here, not by aiohttp after return: the connection is busy until it's out.
            with contextlib.suppress(ConnectionError):  # gone since: nobody to tell
                await response.prepare(request)
                await response.write_eof()
        finally:
            connection.busy = False
            connection.idle_since = time.monotonic()
            if self.in_flight == 0:
                self._trim_handle = self._loop.call_later(_TRIM_AFTER_IDLE_S, self._trim)
        return response

    async def _answer(self, request: web.BaseRequest) -> tuple[int, bytes, str | None]:
        """(status, body, error message or None) of a request whose headers are in."""
        length = _check_framing(request, self.limits.max_body_bytes)
        if self.in_flight >= self.limits.max_in_flight:
            raise _Reject(
                503,
                f"Server busy: {self.limits.max_in_flight} requests in flight "
                "(--rest_api_max_in_flight); retry",
            )
        self.in_flight += 1
        try:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await asyncio.wait_for(
                    self._read_body(request, length), self.limits.body_timeout_s
                )
            except asyncio.TimeoutError:
                raise _Reject(
                    408,
                    f"Request body not received within {self.limits.body_timeout_s:.0f} s",
                ) from None
            if request.method == "OPTIONS" and _is_api_path(request.raw_path):
                return _preflight(request.headers.get("Origin", ""))
            gzipped = "gzip" in request.headers.get("Content-Encoding", "")
            status, payload = await self._loop.run_in_executor(
                self._workers, self._handle, request.method, request.raw_path, body, gzipped
            )
            return status, payload, _error_message(payload) if status >= 400 else None
        finally:
            self.in_flight -= 1

    def _handle(self, method: str, path: str, body: bytearray, gzipped: bool) -> tuple[int, bytes]:
        """The API's answer (in a worker thread: inflating a body is CPU work too)."""
        if gzipped:
            body = _gunzip(body, self.limits.max_body_bytes)
        return self.api.handle(method, path, body)

    async def _read_body(self, request: web.BaseRequest, length: int | None) -> bytearray:
        """The whole body, or _Reject: over the limit, incomplete, badly framed.

        Handed over as the buffer it was read into: a copy to bytes would be the body's size
        again, in the event loop thread's malloc arena, where the parse can't reuse it.
        """
        limit = self.limits.max_body_bytes
        if length == 0:
            return bytearray()
        # A known length is read into one buffer of that size.
        buffer = bytearray(length) if length is not None else bytearray()
        view = memoryview(buffer) if length is not None else None
        received = 0
        try:
            while chunk := await request.content.readany():
                if view is not None:
                    view[received : received + len(chunk)] = chunk
                else:
                    if received + len(chunk) > limit:
                        raise _Reject(413, _too_big(limit))
                    buffer += chunk
                received += len(chunk)
        except _Reject:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # the parser's verdict on the body's framing (bad chunk, EOF)
            raise _Reject(400, f"Malformed request body: {e}") from None
        if not request.content.is_eof() or (length is not None and received != length):
            raise _Reject(400, "Malformed request body: incomplete")
        if view is not None:
            view.release()
        return buffer

    def _trim(self) -> None:
        self._trim_handle = None
        if self.in_flight == 0:
            self._loop.run_in_executor(self._workers, release_freed_memory)

    def log_request(
        self, method: str, path: str, status: int, elapsed_ms: float, error: str | None
    ) -> None:
        line = f"{printable(method)} {printable(path)} {status} {elapsed_ms:.1f} ms"
        if error is None:
            log.info("%s", line)
        else:
            log.info("%s: %s", line, printable(error))


def _check_framing(request: web.BaseRequest, limit: int) -> int | None:
    """The declared body length (None: chunked), or _Reject for framing we don't run.

    llhttp already refuses malformed and duplicate Content-Length, bad chunk sizes, and
    Content-Length with chunked; this refuses what it lets through by design.
    """
    headers = request.headers
    codings = headers.getall("Transfer-Encoding", [])
    if codings:
        if "Content-Length" in headers:
            raise _Reject(400, "Malformed request: both Content-Length and Transfer-Encoding")
        if len(codings) > 1 or codings[0].strip().lower() != "chunked":
            # "gzip, chunked" is framed by chunked, but what it frames can't be read: refused
            # like every other Transfer-Encoding but plain "chunked" (a smuggling pattern).
            raise _Reject(400, f"Unsupported Transfer-Encoding: {', '.join(codings)}")
        return None
    lengths = headers.getall("Content-Length", [])
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise _Reject(400, "Malformed request: bad Content-Length")
    length = int(lengths[0]) if lengths else 0
    if length > limit:
        raise _Reject(413, _too_big(limit))
    return length


def _is_api_path(path: str) -> bool:
    """Is `path` one TF Serving's REST dispatcher takes (its regex "/v1/.*")?"""
    return path[:4].lower() == "/v1/"


def _preflight(origin: str) -> tuple[int, bytes, str | None]:
    """TF Serving's answer to OPTIONS (whatever --rest_api_enable_cors_support says): 200 if
    the Origin header names an http(s) origin, else FAILED_PRECONDITION; no body either way."""
    if re.search(r"https?://", origin):
        return 200, b"", None
    return 400, b"", _NO_ORIGIN


def _gunzip(body: bytearray, limit: int) -> bytearray:
    """A gzip body inflated, as TF Serving's HTTP layer does for a Content-Encoding naming gzip.

    Inflated in steps bounded by what is left of `limit`, so a gzip bomb costs at most the
    limit in memory before its 413. Data that isn't gzip (or ends early) is an empty body, as
    TF Serving's inflater leaves it: the API then says what it says of an empty body.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
    inflated = bytearray()
    compressed = memoryview(body)
    try:
        for start in range(0, len(compressed), _INFLATE_STEP):
            pending = compressed[start : start + _INFLATE_STEP]
            while pending and not inflater.eof:
                # Never 0 here (0 would mean no bound): the size stays <= limit in the loop.
                inflated += inflater.decompress(pending, limit + 1 - len(inflated))
                if len(inflated) > limit:
                    raise _Reject(413, _too_big(limit))
                pending = inflater.unconsumed_tail
    except zlib.error as e:
        log.info("a gzip request body could not be inflated: %s", e)
        return bytearray()
    if not inflater.eof:
        log.info("a gzip request body ended before its gzip stream did")
        return bytearray()
    return inflated


def _too_big(limit: int) -> str:
    return f"Request body larger than {limit} bytes (--rest_api_max_body_bytes)"


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return "error"


def _allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files toward `wanted` (one per connection), if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
