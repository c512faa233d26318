"""hello: the smallest useful zeroscale Function, an HTTP server that answers at once.

    GET /anything        200 "hello from <host> (pid <pid>)"   (any method and path)
    GET /?sleep=2        the same, after 2 seconds (at most 60): keeps a request in
                         flight, to watch concurrency scaling and graceful shutdown
    GET /healthz         200 "ok", the Function's readinessPath

Listens on 0.0.0.0:$PORT (8080 when unset). On SIGTERM or SIGINT it stops accepting,
lets the requests in flight finish, and exits 0. Python 3 standard library only; run
with `python3 -u server.py` so log lines are not buffered.

Each connection serves one request (`Connection: close`): http.server cannot tell an
idle kept-alive connection from a busy one, and closing after every response is what
lets shutdown wait for exactly the requests in flight.
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLEEP_SECONDS = 60.0
MAX_BODY_BYTES = 1 << 20
IDENTITY = f"{socket.gethostname()} (pid {os.getpid()})"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zeroscale-hello"

    def handle_any(self):
        try:
            read_body(self, MAX_BODY_BYTES)
        except BodyError as error:
            return self.reply(error.status, f"{error}\n")
        url = urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(200, "ok\n")
        sleep = parse_qs(url.query).get("sleep", ["0"])[0]
        try:
            seconds = float(sleep)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_SLEEP_SECONDS:
            return self.reply(400, f"sleep must be seconds between 0 and {MAX_SLEEP_SECONDS:g}, not {sleep!r}\n")
        time.sleep(seconds)
        self.reply(200, f"hello from {IDENTITY}\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no access log: one line per request drowns the start/stop lines


# The helpers below are repeated in each example's server.py so that every example
# folder is a self-contained Docker build context.


class BodyError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def read_body(handler, limit):
    """The request body, sent with Content-Length or chunked (http.server reads neither).

    Reading it all before answering also matters when the body is ignored: closing a
    socket with unread input makes the kernel reset the connection, and the client
    may then lose the response."""
    rfile = handler.rfile
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks, size = [], 0
        while True:
            line = rfile.readline(1024)
            try:
                length = int(line.split(b";")[0], 16)
            except ValueError:
                raise BodyError(400, "malformed chunked request body") from None
            if length == 0:
                break
            size += length
            if size > limit:
                raise BodyError(413, f"request body is larger than {limit} bytes")
            chunks.append(rfile.read(length))
            rfile.readline(1024)  # the CRLF after each chunk
        while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields, unused
        return b"".join(chunks)
    try:
        length = int(handler.headers.get("Content-Length") or 0)
    except ValueError:
        raise BodyError(400, "malformed Content-Length") from None
    if length > limit:
        raise BodyError(413, f"request body is larger than {limit} bytes")
    return rfile.read(length) if length > 0 else b""


class Server(ThreadingHTTPServer):
    # Non-daemon handler threads: server_close() then waits for requests in flight.
    daemon_threads = False
    # socketserver's default backlog of 5 resets connections when a burst arrives,
    # such as the requests zeroscale held while the Function was at zero.
    request_queue_size = 1024


def port_from_env():
    value = os.environ.get("PORT") or "8080"
    if not value.isdigit() or not 0 < int(value) < 65536:
        sys.exit(f"PORT must be a TCP port number, not {value!r}")
    return int(value)


def stop_on_signals(server):
    """SIGTERM (Kubernetes, `zeroscale dev`) or SIGINT (Ctrl-C) drains and stops the
    server; a second signal exits at once."""
    stopping = threading.Event()

    def on_signal(signum, _frame):
        if stopping.is_set():
            os._exit(1)
        stopping.set()
        # shutdown() waits for serve_forever() to return, which runs on this (the main)
        # thread, so it must be called from another one.
        threading.Thread(target=drain, args=(signal.Signals(signum).name,)).start()

    def drain(name):
        print(f"{name}: draining", flush=True)
        server.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main():
    server = Server(("0.0.0.0", port_from_env()), Handler)
    stop_on_signals(server)
    print(f"listening on :{server.server_port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listening socket, then waits for requests in flight
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
