"""A small HTTP/1.1 server with Range support, for the demo, the tests and the benchmarks.

It serves files held in memory on 127.0.0.1, counts what it is asked, and can be told to
misbehave on purpose (fail with a status, add latency, ignore ranges, hide sizes). Run it
in another process with ``python -m netcache.testing.httpserver --size-mib 256``.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Bytes written at a time by a paced answer.
_PACE_BYTES = 64 << 10


def random_bytes(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible pseudo-random bytes (``randbytes`` alone stops at 256 MiB)."""
    rng = random.Random(seed)
    chunk = 1 << 20
    return b"".join(rng.randbytes(min(chunk, n - off)) for off in range(0, n, chunk))


class _File:
    """One version of a served file."""

    def __init__(self, data: bytes, generation: int) -> None:
        self.data = data
        self.etag = f'"{hashlib.sha1(data).hexdigest()[:16]}-{generation}"'
        self.modified = email.utils.formatdate(time.time() + generation, usegmt=True)


class RangeServer:
    """Serves ``files`` (path -> bytes) at ``url``; thread-safe.

    Counters (``gets``, ``heads``, ``bytes_sent``, ``requests_by_path``, and
    ``most_in_flight``, the most requests served at once) say what clients asked.
    Faults: ``fail_next(n, status | "reset" | "stall")``, ``latency`` seconds per
    request, ``ignore_ranges`` (answer 200 with the whole file), ``hide_size`` (no
    Content-Length in HEAD), ``short_by`` (send that many bytes fewer than the range),
    ``range_limit`` (answer at most that many bytes of a range, saying so in
    Content-Range, as some servers do), ``range_shift`` (answer a range that many bytes
    early), ``ignore_if_match`` (serve the current version whatever ``If-Match`` asks).

    The object-store model: ``latency`` seconds before each answer, and ``bandwidth``
    bytes per second at most on each connection (None: loopback speed), as S3 gives
    each connection its own stream of about 60-90 MB/s.
    """

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        port: int = 0,
        latency: float = 0.0,
        bandwidth: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._generation = 0
        for path, data in (files or {}).items():
            self.put(path, data)
        self.latency = latency
        #: bytes per second each connection's answers are paced to (None: no cap)
        self.bandwidth: float | None = bandwidth
        self.ignore_ranges = False
        self.hide_size = False
        self.short_by = 0
        self.range_limit: int | None = None
        self.range_shift = 0
        #: sizes to claim for some paths (in HEAD and Content-Range), whatever they hold
        self.claimed_sizes: dict[str, int] = {}
        self.ignore_if_match = False
        #: called after each failure ``fail_next`` asked for is answered (a test's hook)
        self.after_failure: Callable[[], None] | None = None
        self.stall_seconds = 5.0
        self._stopped = False
        self._failures: list[int | str] = []
        self._in_flight = 0
        self.reset_counts()
        self._httpd = _QuietServer(("127.0.0.1", port), _Handler)
        self._httpd.range_server = self
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def data(self, path: str) -> bytes:
        """The bytes served at ``path`` now (``KeyError`` if none)."""
        with self._lock:
            return self._files["/" + path.lstrip("/")].data

    def etag(self, path: str) -> str:
        """The ETag served with ``path`` now."""
        with self._lock:
            return self._files["/" + path.lstrip("/")].etag

    def paths(self) -> list[str]:
        """Every path served, sorted."""
        with self._lock:
            return sorted(self._files)

    def counts(self) -> dict[str, int]:
        """The counters now, at once: ``gets``, ``heads``, ``bytes_sent``,
        ``most_in_flight``."""
        with self._lock:
            return {"gets": self.gets, "heads": self.heads, "bytes_sent": self.bytes_sent,
                    "most_in_flight": self.most_in_flight}  # fmt: skip

    def serve_forever(self) -> None:
        """Serve on this thread until ``stop`` (a server process's main loop)."""
        self._httpd.serve_forever()

    def put(self, path: str, data: bytes) -> None:
        with self._lock:
            self._generation += 1
            self._files["/" + path.lstrip("/")] = _File(bytes(data), self._generation)

    def fail_next(self, n: int = 1, status: int | str = 503) -> None:
        """Make the next ``n`` requests fail: with an HTTP ``status``, ``"reset"`` (close
        the connection without an answer) or ``"stall"`` (answer after ``stall_seconds``)."""
        with self._lock:
            self._failures.extend([status] * n)

    def reset_counts(self) -> None:
        with self._lock:
            self.gets = 0
            self.heads = 0
            self.bytes_sent = 0
            self.requests_by_path: Counter[str] = Counter()
            self.most_in_flight = self._in_flight

    def start(self) -> RangeServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, name="netcache-test-http"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, and hang up on clients that keep connections open."""
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # called by the handler

    def take(self, method: str, path: str) -> tuple[_File | None, int | str | None]:
        """Count a request, and say what answers it: the file (None: 404) and the failure
        asked for, if any. A test may override it to change files between requests."""
        with self._lock:
            if method == "GET":
                self.gets += 1
            else:
                self.heads += 1
            self.requests_by_path[path] += 1
            failure = self._failures.pop(0) if self._failures else None
            return self._files.get(path), failure

    def _arrived(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self.most_in_flight = max(self.most_in_flight, self._in_flight)

    def _sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-answer (timeouts, closed files) are normal here."""

    range_server: RangeServer

    # socketserver's default backlog of 5 drops the SYNs of a client opening many
    # connections at once (aiohttp opens up to 100), which then wait 1 s to retry.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests for ``self.server.range_server``."""

    protocol_version = "HTTP/1.1"
    server: _QuietServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _control(self, owner: RangeServer) -> None:
        """``/_control/stats`` (JSON counts), ``/_control/reset``,
        ``/_control/latency/<seconds>``, ``/_control/bandwidth/<bytes per second, 0 for
        none>``: for a server in another process."""
        parts = self.path.split("/")[2:]
        if parts[:1] == ["reset"]:
            owner.reset_counts()
        elif parts[:1] == ["latency"] and len(parts) == 2:
            owner.latency = float(parts[1])
        elif parts[:1] == ["bandwidth"] and len(parts) == 2:
            owner.bandwidth = float(parts[1]) or None
        counts = owner.counts()
        del counts["most_in_flight"]
        body = json.dumps(counts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, body: bool) -> None:
        owner = self.server.range_server
        if self.path.startswith("/_control/"):
            return self._control(owner)
        owner._arrived(1)
        try:
            return self._answer(owner, body)
        finally:
            owner._arrived(-1)

    def _answer(self, owner: RangeServer, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        file = self._file_or_failure(owner, path, body)
        if file is None:
            return
        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match != file.etag and not owner.ignore_if_match:
            return self._error(412)
        span = self._status_line(owner, path, len(file.data))
        if span is None:
            return
        payload = memoryview(file.data)[span[0] : span[1]]
        if body and owner.short_by:
            payload = payload[: max(0, len(payload) - owner.short_by)]
        self.send_header("ETag", file.etag)
        self.send_header("Last-Modified", file.modified)
        self.send_header("Accept-Ranges", "bytes")
        self._send_payload(owner, path, payload, body)

    def _file_or_failure(self, owner: RangeServer, path: str, body: bool) -> _File | None:
        """The file to answer with, or None once a failure or a 404 has been answered."""
        file, failure = owner.take("GET" if body else "HEAD", path)
        if owner.latency:
            time.sleep(owner.latency)
        if failure == "reset" or owner._stopped:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if failure == "stall":
            time.sleep(owner.stall_seconds)
        elif failure is not None:
            self._error(int(failure))
            if owner.after_failure is not None:
                owner.after_failure()
            return None
        if file is None:
            self._error(404)
        return file

    def _status_line(self, owner: RangeServer, path: str, size: int) -> tuple[int, int] | None:
        """Send the status (200, 206 with its Content-Range, or 416 whole) and return
        the span of bytes to send, or None once answered."""
        start, end = 0, size
        ranged = self.headers.get("Range")
        match = _RANGE.match(ranged) if ranged and not owner.ignore_ranges else None
        if not match:
            self.send_response(200)
            return start, end
        first, last = match.groups()
        if first:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
        else:
            start = max(0, size - int(last))
        if start >= size and size > 0:
            self._error(416, {"Content-Range": f"bytes */{size}"})
            return None
        if owner.range_limit is not None:
            end = min(end, start + owner.range_limit)
        if owner.range_shift:  # a lying server: other bytes, said truly
            start, end = max(0, start - owner.range_shift), end - owner.range_shift
        self.send_response(206)
        total = owner.claimed_sizes.get(path, size)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        return start, end

    def _send_payload(self, owner: RangeServer, path: str, payload: memoryview, body: bool) -> None:
        if owner.hide_size:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if body:
                owner._sent(len(payload))
                for off in range(0, len(payload), 1 << 16):
                    chunk = payload[off : off + (1 << 16)]
                    self.wfile.write(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            return
        claimed = owner.claimed_sizes.get(path) if not body else None
        self.send_header("Content-Length", str(claimed or len(payload)))
        self.end_headers()
        if body:
            owner._sent(len(payload))  # before writing: the client may be faster
            self._write_paced(payload, owner.bandwidth)

    def _write_paced(self, payload: memoryview, bandwidth: float | None) -> None:
        """Write ``payload``, at most ``bandwidth`` bytes per second on this connection
        (each connection has its own handler thread, so each is paced on its own)."""
        if not bandwidth:
            self.wfile.write(payload)
            return
        started = time.monotonic()
        for off in range(0, len(payload), _PACE_BYTES):
            self.wfile.write(payload[off : off + _PACE_BYTES])
            ahead = started + (off + _PACE_BYTES) / bandwidth - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mib", type=float, default=0.0,
                        help="MiB/s each connection gets at most (0: no cap)")  # fmt: skip
    parser.add_argument("--size-mib", type=int, default=64, help="size of /big.bin")
    parser.add_argument("--small-files", type=int, default=0, help="count of /small/N.bin")
    parser.add_argument("--folder", help="serve the files under this folder instead "
                        "(read into memory at start), at their paths under it")  # fmt: skip
    args = parser.parse_args()
    files = folder_files(args.folder) if args.folder else generated_files(args)
    server = RangeServer(files, port=args.port, latency=args.latency_ms / 1000,
                         bandwidth=args.bandwidth_mib * (1 << 20) or None)  # fmt: skip
    print(server.url, flush=True)
    if args.folder:
        print(f"serving {len(files)} files of {args.folder}, e.g. {server.url}/"
              f"{next(iter(files), '')}", file=sys.stderr, flush=True)  # fmt: skip
    server.serve_forever()


def generated_files(args: argparse.Namespace) -> dict[str, bytes]:
    files = {"big.bin": random_bytes(args.size_mib << 20)}
    for i in range(args.small_files):
        files[f"small/{i}.bin"] = random_bytes(1 << 20, seed=i + 1)
    return files


def folder_files(folder: str) -> dict[str, bytes]:
    """Every regular file under ``folder`` (links not followed), by its path under it."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(parent, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
    return files


if __name__ == "__main__":
    main()
