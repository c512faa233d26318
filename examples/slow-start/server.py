"""slow-start: a Function that takes a while before it listens, to show zeroscale
holding requests while a Function wakes from zero.

    STARTUP_DELAY_SECONDS   seconds to wait before binding the port (default 3), as a
                            real function might spend loading a model or warming a cache
    GET /anything           200 "slow-start from <host> (pid <pid>): ready after 3s"
                            (any method and path)
    GET /healthz            200 "ok", the Function's readinessPath

Until the delay has passed nothing listens on $PORT, so readiness checks fail and the
activator keeps the first requests waiting (up to the Function's requests.maxQueueWait)
instead of failing them. Then it behaves like hello: 0.0.0.0:$PORT (8080 when unset),
one request per connection, and SIGTERM/SIGINT drain and exit 0, also during the delay.
Python 3 standard library only; run with `python3 -u server.py`.
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY_BYTES = 1 << 20
IDENTITY = f"{socket.gethostname()} (pid {os.getpid()})"
started = time.monotonic()
ready_after = ""  # set once listening, e.g. "3s"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zeroscale-slow-start"

    def handle_any(self):
        try:
            read_body(self, MAX_BODY_BYTES)
        except BodyError as error:
            return self.reply(error.status, f"{error}\n")
        if self.path.split("?")[0] == "/healthz":
            return self.reply(200, "ok\n")
        self.reply(200, f"slow-start from {IDENTITY}: ready after {ready_after}\n")

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


def startup_delay_from_env():
    value = os.environ.get("STARTUP_DELAY_SECONDS") or "3"
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        sys.exit(f"STARTUP_DELAY_SECONDS must be seconds between 0 and 3600, not {value!r}")
    return seconds


def main():
    global ready_after
    port, delay = port_from_env(), startup_delay_from_env()
    # A signal during the delay ends the process at once: there is nothing to drain.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: sys.exit(0))
    print(f"starting: waiting {delay:g}s before listening", flush=True)
    time.sleep(delay)

    server = Server(("0.0.0.0", port), Handler)
    stop_on_signals(server)
    ready_after = f"{time.monotonic() - started:.1f}s"
    print(f"listening on :{server.server_port} after {ready_after}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listening socket, then waits for requests in flight
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
