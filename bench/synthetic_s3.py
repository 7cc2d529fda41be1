"""A listing-only S3 endpoint on loopback whose bucket holds N made-up objects (no data).

moto stores what it is sent and accepts ~235 PUTs/s here: a million objects would take 70
minutes to create, and its ListObjectsV2 sorts the whole bucket for every page. This server
answers ListObjectsV2 (``list-type=2``: prefix, max-keys, continuation-token, delimiter ``/``)
with the wire format S3 uses, computing each page's keys from their index, so a listing of a
million objects costs the client what it costs against S3. It serves nothing else (GET of an
object, PUT, HEAD: 501), so it only measures listings.

Keys: ``<prefix>/<folder:03d>/<index:08d>-some-typical-file-name.jpg``, ``folders`` folders
(folder-major, so they come in key order as S3 lists them), each object 123,456 bytes.

    with SyntheticS3(1_000_000) as s3:
        uri = f"s3://bucket/imgs?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from xml.sax.saxutils import escape

NAME = "some-typical-file-name.jpg"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
ENTRY = (
    "<Contents><Key>{key}</Key><LastModified>2026-12-01T00:00:00.000Z</LastModified>"
    '<ETag>"{etag:032x}"</ETag><Size>123456</Size><StorageClass>STANDARD</StorageClass></Contents>'
)


class SyntheticS3:
    """The server, in a thread; ``port`` once entered. ``objects`` keys under ``prefix``."""

    def __init__(
        self, objects: int, *, prefix: str = "imgs", folders: int = 100, latency: float = 0.0
    ) -> None:
        self.objects, self.prefix, self.folders = objects, prefix, folders
        self.latency = latency  # seconds before each page (S3 itself: ~20-60 ms a page)
        self.per_folder = -(-objects // folders)
        self.pages = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 20  # headers and body leave in one write...
            disable_nagle_algorithm = True  # ...at once (else 40 ms of delayed ACK a page)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(parts.query))
                if q.get("list-type") != "2":
                    self._send(501, b"listing only")
                    return
                if outer.latency:
                    time.sleep(outer.latency)
                body = outer.page(q).encode()
                outer.pages += 1
                self._send(200, body, "application/xml")

            def do_HEAD(self) -> None:
                self._send(501, b"")

            do_PUT = do_POST = do_DELETE = do_HEAD

            def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def key(self, i: int) -> str:
        folder = i // self.per_folder
        return f"{self.prefix}/{folder:03d}/{i:08d}-{NAME}"

    def page(self, q: dict[str, str]) -> str:
        prefix = q.get("prefix", "")
        limit = min(1000, int(q.get("max-keys", "1000")))
        start = int(q.get("continuation-token", "0"))
        out = [HEAD, f"<Name>bucket</Name><Prefix>{escape(prefix)}</Prefix>"]
        if q.get("delimiter") == "/" and prefix.rstrip("/") == self.prefix:
            # the top level: one common prefix per folder, no objects
            out.append(f"<KeyCount>{self.folders}</KeyCount><MaxKeys>{limit}</MaxKeys>")
            out.append("<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>")
            out += [
                f"<CommonPrefixes><Prefix>{self.prefix}/{f:03d}/</Prefix></CommonPrefixes>"
                for f in range(self.folders)
            ]
            return "".join([*out, "</ListBucketResult>"])
        first, last = self._range(prefix)
        start = max(start, first)
        stop = min(start + limit, last)
        truncated = stop < last
        out.append(f"<KeyCount>{max(0, stop - start)}</KeyCount><MaxKeys>{limit}</MaxKeys>")
        out.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated:
            out.append(f"<NextContinuationToken>{stop}</NextContinuationToken>")
        out += [ENTRY.format(key=self.key(i), etag=i * 2654435761) for i in range(start, stop)]
        return "".join([*out, "</ListBucketResult>"])

    def _range(self, prefix: str) -> tuple[int, int]:
        """The object indexes under ``prefix`` (the whole bucket, or one folder)."""
        rest = prefix[len(self.prefix) :].strip("/") if prefix.startswith(self.prefix) else None
        if rest is None:
            return 0, 0
        if not rest:
            return 0, self.objects
        folder = int(rest) if rest.isdigit() else -1
        if not 0 <= folder < self.folders:
            return 0, 0
        first = folder * self.per_folder
        return first, min(first + self.per_folder, self.objects)

    def __enter__(self) -> SyntheticS3:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
