"""users: a user-registration Function that keeps its state outside itself.

A Function's pods come and go (zeroscale stops the last one when the Function is idle),
so nothing worth keeping may live in a pod. This one stores every user in Redis, keyed
by the normalised email, and writes with SET ... NX: "create unless it exists" is one
atomic step in Redis, so any number of replicas can take POSTs for the same email at once
and exactly one of them creates the user.

    POST /users  {"email": "Ada@example.com", "name": "Ada"}
        201 + the record   the user was created
        200 + the record   the same user was already there (a retried POST is harmless)
        409                the email is taken by a user with a different name
        400                not JSON, unknown fields, email missing or malformed, name missing
    GET /users/<email>     200 + the record, or 404
    GET /healthz           200 "ok", the Function's readinessPath (it does not check
                           Redis: a pod that cannot reach the store answers 503 quickly,
                           which helps callers more than a pod that never turns ready)

A record is {"id", "email", "name", "createdAt"}: the email lower-cased and trimmed, the
id derived from it ("u_" + 16 hex digits of its SHA-256), so it is the same whichever
replica computes it, and createdAt set once, by the POST that created the user.

The store: Redis at $REDIS_URL (redis://[[user]:password@]host[:port][/db], default
redis://127.0.0.1:6379), spoken to with the small RESP client below; keys are
"users:<email>". If Redis cannot be reached, requests get 503 "user store unavailable:
...". See README.md next to this file for running Redis locally and on a cluster.

Listens on 0.0.0.0:$PORT (8080 when unset), one request per connection; SIGTERM/SIGINT
drain and exit 0. Python 3 standard library only; run with `python3 -u server.py`.
"""

import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

MAX_BODY_BYTES = 64 << 10
MAX_NAME_CHARS = 200
# Deliberately loose: one @, no spaces, a dot in the domain. Real validation is sending
# a confirmation mail, which is beyond an example.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
REDIS_TIMEOUT_SECONDS = 2.0

store = None  # the Redis client, set up by main()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zeroscale-users"

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/healthz":
            return self.reply(200, "ok\n")
        if not path.startswith("/users/") or path == "/users/":
            return self.not_found()
        email = normalise_email(unquote(path[len("/users/") :]))
        try:
            stored = store.command("GET", user_key(email))
        except StoreUnavailable as error:
            return self.store_unavailable(error)
        if stored is None:
            return self.reply(404, f"no user with email {email}\n")
        self.reply_json(200, json.loads(stored))

    def do_POST(self):
        try:
            body = read_body(self, MAX_BODY_BYTES)
        except BodyError as error:
            return self.reply(error.status, f"{error}\n")
        if urlsplit(self.path).path != "/users":
            return self.not_found()
        try:
            record = new_user(body)
        except ValueError as error:
            return self.reply(400, f"{error}\n")
        try:
            status, stored = create(record)
        except StoreUnavailable as error:
            return self.store_unavailable(error)
        if status == 409:
            return self.reply(
                409,
                f"a user with email {record['email']} already exists with a different "
                f"name ({stored['name']!r}, not {record['name']!r})\n",
            )
        if status == 201:
            print(f"created user {stored['id']}", flush=True)
        self.reply_json(status, stored, location=f"/users/{quote(stored['email'], safe='@')}")

    def not_found(self):
        self.reply(404, "not found: use POST /users or GET /users/<email>\n")

    def store_unavailable(self, error):
        self.reply(503, f"user store unavailable: {error}\n", headers={"Retry-After": "1"})

    def reply_json(self, status, value, location=None):
        headers = {"Location": location} if location else {}
        self.reply(status, json.dumps(value) + "\n", "application/json", headers)

    def reply(self, status, text, content_type="text/plain; charset=utf-8", headers=None):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no access log: one line per request drowns the start/stop lines


def new_user(body):
    """The record a POST asks for, or ValueError saying what is wrong with the body."""
    try:
        fields = json.loads(body)
    except ValueError as error:  # also bytes that are not UTF-8
        raise ValueError(f"request body is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError('request body must be a JSON object: {"email": ..., "name": ...}')
    unknown = sorted(set(fields) - {"email", "name"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}: only email and name are accepted")
    email, name = fields.get("email"), fields.get("name")
    if not isinstance(email, str) or not email.strip():
        raise ValueError("email is required (a string)")
    email = normalise_email(email)
    if len(email) > 254 or not EMAIL.fullmatch(email):
        raise ValueError(f"email {email!r} is not an email address")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name is required (a non-empty string)")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name is longer than {MAX_NAME_CHARS} characters")
    return {
        "id": "u_" + hashlib.sha256(email.encode()).hexdigest()[:16],
        "email": email,
        "name": name,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def normalise_email(email):
    # Mail servers treat the part before @ as case-sensitive in theory; people don't.
    return email.strip().lower()


def user_key(email):
    return "users:" + email


def create(record):
    """Stores `record` unless its email is taken: (201, record) when created, (200,
    stored) when the same user was there already, (409, stored) when another was."""
    key = user_key(record["email"])
    for _ in range(3):
        # NX: set only if the key does not exist, atomically; the reply is None if it did.
        if store.command("SET", key, json.dumps(record), "NX") is not None:
            return 201, record
        stored = store.command("GET", key)
        if stored is None:
            continue  # deleted between the two commands: try to create it again
        stored = json.loads(stored)
        same = stored["name"] == record["name"]
        return (200 if same else 409), stored
    raise StoreUnavailable("the user was deleted and re-created repeatedly; try again")


# A minimal Redis client: RESP2 over a socket, with a small pool of open connections.
# Enough for the few commands above; a real service would use a Redis library.


class StoreUnavailable(Exception):
    pass


class Redis:
    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"REDIS_URL must start with redis://, not {url!r}")
        try:
            self.address = (parts.hostname or "127.0.0.1", parts.port or 6379)
            self.db = int(parts.path.strip("/") or 0)
        except ValueError as error:
            raise ValueError(f"REDIS_URL {url!r}: {error}") from None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        # Shown in messages and logs, without the password.
        self.display = f"redis://{self.address[0]}:{self.address[1]}/{self.db}"
        self.idle, self.lock = [], threading.Lock()

    def command(self, *args):
        """Runs one command and returns its reply (None for a nil reply). Raises
        StoreUnavailable when Redis cannot be reached or answers with an error."""
        with self.lock:
            connection = self.idle.pop() if self.idle else None
        try:
            if connection is not None:
                try:
                    return self._run(connection, args)
                except OSError:
                    pass  # closed while idle, e.g. by Redis' idle timeout: reconnect
            return self._run(self._connect(), args)
        except OSError as error:
            raise StoreUnavailable(f"{self.display}: {error}") from None
        except RedisError as error:
            raise StoreUnavailable(f"{self.display} answered: {error}") from None

    def _run(self, connection, args):
        """Runs a command on `connection`, then keeps it for the next one unless it failed."""
        try:
            return connection.call(args)
        except OSError:
            connection.close()
            connection = None
            raise
        finally:
            if connection is not None:
                with self.lock:
                    if len(self.idle) < 16:
                        self.idle.append(connection)
                        connection = None
                if connection is not None:
                    connection.close()

    def _connect(self):
        connection = Connection(self.address)
        try:
            if self.password is not None:
                auth = [self.username, self.password] if self.username else [self.password]
                connection.call(["AUTH", *auth])
            if self.db:
                connection.call(["SELECT", str(self.db)])
        except BaseException:
            connection.close()
            raise
        return connection


class RedisError(Exception):
    """An error reply from Redis (`-ERR ...`)."""


class Connection:
    def __init__(self, address):
        self.socket = socket.create_connection(address, timeout=REDIS_TIMEOUT_SECONDS)
        self.reader = self.socket.makefile("rb")

    def call(self, args):
        """Sends a command as an array of bulk strings and reads the reply."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.socket.sendall(b"".join(out))
        try:
            return self.read_reply()
        except ValueError as error:  # a length that is not a number: the stream is lost
            raise ConnectionError(f"not a Redis reply: {error}") from None

    def read_reply(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by Redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            data = self.reader.read(int(rest) + 2)
            if len(data) != int(rest) + 2:
                raise ConnectionError("connection closed by Redis")
            return data[:-2]
        if kind == b"*":
            return None if int(rest) < 0 else [self.read_reply() for _ in range(int(rest))]
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")

    def close(self):
        self.reader.close()
        self.socket.close()


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


def report_store():
    """Logs whether Redis answers, without holding up the server (a connect may take
    REDIS_TIMEOUT_SECONDS). Not fatal: requests answer 503 until Redis is there."""
    try:
        store.command("PING")
        print(f"user store: {store.display}", flush=True)
    except StoreUnavailable as error:
        # Expected whenever no Redis runs (the usual first `zeroscale dev examples/`),
        # so say so plainly instead of looking like a crash.
        print(
            f"user store: no Redis answers yet ({error}). That is expected if you have "
            "not started one: Redis is optional here; the server runs, and /users answers "
            "503 until Redis is up (users/README.md shows how to start one).",
            flush=True,
        )


def main():
    global store
    port = port_from_env()
    try:
        store = Redis(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379")
    except ValueError as error:
        sys.exit(str(error))
    server = Server(("0.0.0.0", port), Handler)
    stop_on_signals(server)
    print(f"listening on :{server.server_port}", flush=True)
    threading.Thread(target=report_store, daemon=True).start()
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listening socket, then waits for requests in flight
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
