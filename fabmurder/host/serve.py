"""``serve``: hand the agent's wheels to the other hosts of a setup, read-only, for a while.

``python -m fabmurder serve --dir D --bind ADDR --port P --for S`` answers
``GET /<name>`` with the file ``D/<name>`` for the ``*.whl`` files that were
in ``D`` when it started, and 404 for anything else (no listing, no path
beyond one name, no other method). It exits after ``S`` seconds, or when
``daemon stop`` ends it.

Setup uploads the wheels to a few hosts only and runs this there; every
other host fetches them from one of those and checks each against the
SHA-256 the control host sent, so a relay can slow a host down but never
change what it installs (:mod:`fabmurder.wheel_relay`). The wheels are
fabmurder's and its dependencies', public packages, so serving them
without a token gives nothing away.
"""

from __future__ import annotations

import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fabmurder.host import daemon
from fabmurder.host.cli import EXIT_OK, emit, run

#: seconds a relay serves when not told otherwise
DEFAULT_FOR = 600.0
CHUNK = 1 << 20


def wheels_in(directory: str) -> dict[str, str]:
    """Return name -> path of the regular ``*.whl`` files directly in ``directory``."""
    out = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".whl") and entry.is_file(follow_symlinks=False):
                out[entry.name] = entry.path
    return out


def make_server(directory: str, bind: str, port: int) -> ThreadingHTTPServer:
    """Return an HTTP server of the wheels in ``directory`` (not yet serving)."""
    files = wheels_in(directory)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = files.get(self.path.lstrip("/")) if self.path.count("/") == 1 else None
            if path is None:
                self.send_error(404)
                return
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(path, flags), "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                while chunk := fh.read(CHUNK):
                    self.wfile.write(chunk)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # a request log per host and wheel is noise

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    """Return the ``serve`` argument parser."""
    p = argparse.ArgumentParser(prog="fabmurder serve", description=__doc__)
    p.add_argument("--dir", required=True, help="the directory whose *.whl files are served")
    p.add_argument("--bind", required=True, help="the address to listen on")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--for", dest="seconds", type=float, default=DEFAULT_FOR)
    return p


def main(argv: list[str]) -> int:
    """Run ``serve`` until its time is up."""

    def body(args: argparse.Namespace) -> int:
        server = make_server(args.dir, args.bind, args.port)
        timer = threading.Timer(args.seconds, server.shutdown)
        timer.daemon = True
        timer.start()
        emit({"serving": sorted(wheels_in(args.dir)), "port": server.server_address[1]})
        daemon.notify_ready()  # listening: ``daemon start`` may return
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()
        return EXIT_OK

    return run(parser(), argv, body)
