"""``debias label``: a local web page for labelling a run's images blind, one at a time.

A stdlib ``ThreadingHTTPServer`` serves one page (``templates/label.html``, self-contained) and a small JSON
API. The page never learns an image's profession, prompt or classifier label: images are served by an opaque
id (:class:`~debias.validity.labels.SampleItem`), and progress is shown per anonymous stratum number. Every
label is written to ``labels/labels.jsonl`` (fsynced) before the page moves on, so stopping the server at any
moment loses nothing, and a restart continues at the labeller's next unlabelled image.

Routes::

    GET  /?token=…            the printed address: trades the token for the session cookie, redirects to /
    GET  /                    the page
    GET  /api/state           {"current": {"id", "label"} | null, "progress": […], "history": [ids], …}
    GET  /api/item/<id>       {"id", "label"}: an image already seen (the page's "back")
    GET  /image/<id>          the PNG
    POST /api/label           {"id", "label"} → state      (label: female / male / unclear / no_person)
    POST /api/skip            {"id"} → state               (skipped images come back after the others)

**Who can ask.** The server binds to 127.0.0.1 by default (``--host`` for another address; IPv6 too). Each
start draws a random token, printed in the address; opening it sets an HttpOnly, SameSite=Strict cookie holding
a second secret, and every route (page, API, images) answers 401 without that cookie (compared in constant
time). Every request must name an allowed host (localhost, a loopback address, the bound address, or an
``--allow-host`` name), whatever the bind, so a web page cannot reach the API through DNS rebinding. POSTs must
be JSON from the page's own origin.

**What it serves.** Only PNG files inside the run folder: an image's path from ``audit.json`` must be relative,
without ``..``, and is opened component by component without following a symbolic link
(:func:`~debias.validity.guards.read_run_png`).

**How it reads requests.** The standard library's parser, with the framing decided here: a POST needs a
Content-Length of at most 64 KiB (411 for none or for chunked bodies, 413 above); its body is read in full
before any answer. Every error answer closes the connection, so no unread byte is ever taken for a request.
A connection silent for ``timeout`` seconds is closed, and at most ``max_connections`` are served at once
(beyond, 503 and close). A port in use is an error that says what to do (``--port 0`` picks a free one).

The standard library is enough here: one labeller, a handful of requests a second, no dependency to keep.
"""

from __future__ import annotations

import errno
import hmac
import json
import re
import secrets
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

from debias.core.errors import InputError
from debias.validity.guards import allowed_hosts, host_allowed, is_loopback, read_run_png
from debias.validity.labels import (
    LabelSample, LabelStore, RunImages, check_label, check_labeller, load_run, sample_for_run,
)
from debias.validity.ppi import LABELS_FOR_10

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "label.html"
DEFAULT_PORT = 8765
HISTORY = 200            # ids the page can step back through
MAX_BODY = 1 << 16       # bytes of a POST body (the page sends under 100)
TIMEOUT = 15.0           # seconds a connection may stay silent (mid-request or idle between requests)
MAX_CONNECTIONS = 32     # connections served at once (a browser opens about six)
NOT_LOGGED_IN = ("not logged in: open the address with ?token=… that debias label printed in its terminal "
                 "(a restarted server prints a new one)")


class LabelSession:
    """What one labeller's server knows: the sample, the label file, their labels so far, this run's skips."""

    def __init__(self, run: RunImages, sample: LabelSample, labeller: str):
        self.run, self.sample, self.labeller = run, sample, check_labeller(labeller)
        self.store = LabelStore(run.run_dir)
        self.items = sample.by_id()
        self.lock = threading.Lock()
        self.skipped: list[str] = []
        self.mine: dict[str, str] = {}    # key → this labeller's latest label
        self.history: list[str] = []      # ids in the order this labeller labelled them
        keys = {item.key: item.id for item in sample.items}
        for r in self.store.records():
            if r.labeller == self.labeller:
                self.mine[r.key] = r.label
                if r.key in keys:
                    self._remember(keys[r.key])

    def _remember(self, item_id: str) -> None:
        if item_id in self.history:
            self.history.remove(item_id)
        self.history.append(item_id)

    def current(self) -> str | None:
        """The next image to label: the first unlabelled one in order, skipped ones after all the others."""
        todo = [item.id for item in self.sample.items if item.key not in self.mine]
        fresh = [i for i in todo if i not in self.skipped]
        if fresh:
            return fresh[0]
        if todo:  # only skipped ones are left: serve them again, in the order they were skipped
            self.skipped = [i for i in self.skipped if i in todo]
            return self.skipped[0]
        return None

    def state(self) -> dict:
        with self.lock:
            current = self.current()
            progress = {s: [0, n] for s, n in self.sample.sizes().items()}
            for item in self.sample.items:
                if item.key in self.mine:
                    progress[item.stratum][0] += 1
            done = sum(p[0] for p in progress.values())
            return {"current": self.item(current) if current else None, "labelled": done,
                    "total": len(self.sample.items), "history": self.history[-HISTORY:],
                    "progress": [{"stratum": s, "labelled": d, "total": n} for s, (d, n) in progress.items()]}

    def item(self, item_id: str) -> dict:
        key = self._key(item_id)
        return {"id": item_id, "label": self.mine.get(key)}

    def label(self, item_id: str, label: str) -> None:
        key = self._key(item_id)
        label = check_label(label)
        with self.lock:
            self.store.add(key, label, self.labeller)  # on disk (fsynced) before the page is told
            self.mine[key] = label
            self._remember(item_id)
            if item_id in self.skipped:
                self.skipped.remove(item_id)

    def skip(self, item_id: str) -> None:
        self._key(item_id)
        with self.lock:
            if item_id in self.skipped:
                self.skipped.remove(item_id)
            self.skipped.append(item_id)

    def image(self, item_id: str) -> bytes:
        """The image's PNG bytes, if it is a PNG file inside the run folder (guards.read_run_png)."""
        return read_run_png(self.run.run_dir, self.run.images[self._key(item_id)].image)

    def _key(self, item_id: str) -> str:
        item = self.items.get(item_id)
        if item is None:
            raise KeyError(item_id)
        return item.key


def render_page(session: LabelSession, nonce: str) -> str:
    """The page, with the labeller's name as escaped text (Jinja2 autoescape) and in a JSON island."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATE.parent)), autoescape=True, undefined=StrictUndefined)
    config = {"labeller": session.labeller, "labels": ["female", "male", "unclear", "no_person"]}
    return env.get_template(TEMPLATE.name).render(labeller=session.labeller, config=config, nonce=nonce,
                                                  strata=len(session.sample.strata))


class LabelHandler(BaseHTTPRequestHandler):
    """Routes of the label page; ``self.server`` is the :class:`LabelServer`."""

    server: LabelServer
    server_version = "debias"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "debias"  # no Python version in the Server header

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # the socket's timeout, set by StreamRequestHandler.setup
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: the terminal shows the address and errors only

    @property
    def session(self) -> LabelSession:
        return self.server.session

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._no_body() or not self._host_ok():
            return
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html") and "token" in parse_qs(url.query):
            return self._login(parse_qs(url.query)["token"][0])
        if not self._logged_in():
            return
        try:
            if url.path in ("/", "/index.html"):
                nonce = secrets.token_urlsafe(16)
                return self._send(render_page(self.session, nonce).encode(), "text/html; charset=utf-8",
                                  csp=nonce)
            if url.path == "/api/state":
                return self._send_json(self.session.state())
            if url.path.startswith("/api/item/"):
                return self._send_json(self.session.item(url.path.rsplit("/", 1)[1]))
            if url.path.startswith("/image/"):
                data = self.session.image(url.path.rsplit("/", 1)[1])
                return self._send(data, "image/png", cache="private, max-age=86400")
        except KeyError:
            return self._send_json({"error": "no such image"}, HTTPStatus.NOT_FOUND)
        except OSError:  # gone since the server started, or not a PNG inside the run folder
            return self._send_json({"error": "cannot serve this image: it is not a PNG file inside the run folder"},
                                   HTTPStatus.NOT_FOUND)
        self._send_json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        raw = self._body()
        if raw is None or not self._host_ok() or not self._logged_in():
            return
        body = self._json(raw)
        if body is None:
            return
        path = urlsplit(self.path).path
        try:
            if path == "/api/label":
                self.session.label(str(body.get("id", "")), str(body.get("label", "")))
            elif path == "/api/skip":
                self.session.skip(str(body.get("id", "")))
            else:
                return self._send_json({"error": f"no such action: {path}"}, HTTPStatus.NOT_FOUND)
        except KeyError:
            return self._send_json({"error": "no such image"}, HTTPStatus.NOT_FOUND)
        except InputError as err:
            return self._send_json({"error": str(err)}, HTTPStatus.BAD_REQUEST)
        except OSError as err:  # the label could not be written: say so, the page keeps the image
            return self._send_json({"error": f"could not write the label: {err}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        self._send_json(self.session.state())

    # -------------------------------------------------------------------------------- checks, in order
    def _no_body(self) -> bool:
        """A GET carries no body: one it declared would be left unread, to be taken for the next request."""
        if self.headers.get("Transfer-Encoding") is None and (self.headers.get("Content-Length") or "0").strip() == "0":
            return True
        self._send_json({"error": "a GET request has no body"}, HTTPStatus.BAD_REQUEST)
        return False

    def _body(self) -> bytes | None:
        """The POST's body, read in full; None once an answer is sent (a refused body is never read on)."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            return self._refuse("send the body with a Content-Length, not chunked", HTTPStatus.LENGTH_REQUIRED)
        if not lengths:
            return self._refuse("a POST needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        if len(set(lengths)) > 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0].strip()):
            return self._refuse("invalid Content-Length", HTTPStatus.BAD_REQUEST)
        length = int(lengths[0])
        if length > MAX_BODY:
            return self._refuse(f"the body is over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            return self._refuse("the body did not arrive in time", HTTPStatus.REQUEST_TIMEOUT)
        if len(data) < length:  # the client went away mid-body
            self.close_connection = True
            return None
        return data

    def _host_ok(self) -> bool:
        if len(self.headers.get_all("Host") or []) == 1 and host_allowed(self.headers["Host"], self.server.allowed):
            return True
        self._send_json({"error": f"unexpected Host header {self.headers.get('Host', '')!r}: this server answers to "
                                  f"{', '.join(sorted(self.server.allowed))} and loopback addresses; start it with "
                                  "--allow-host NAME to add a name"}, HTTPStatus.FORBIDDEN)
        return False

    def _login(self, token: str) -> None:
        """The printed address: the right token gets the session cookie and a redirect to the bare page."""
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            return self._send_json({"error": "wrong token: open the address debias label printed (a restarted "
                                             "server prints a new one)"}, HTTPStatus.FORBIDDEN)
        cookie = f"{self.server.cookie_name}={self.server.cookie_value}; HttpOnly; SameSite=Strict; Path=/"
        self._send(b"", "text/plain", status=HTTPStatus.SEE_OTHER, headers={"Location": "/", "Set-Cookie": cookie})

    def _logged_in(self) -> bool:
        expected = self.server.cookie_value.encode()
        for header in self.headers.get_all("Cookie") or []:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.server.cookie_name and hmac.compare_digest(value.encode(), expected):
                    return True
        self._send_json({"error": NOT_LOGGED_IN}, HTTPStatus.UNAUTHORIZED)
        return False

    def _json(self, raw: bytes) -> dict | None:
        """The body as a JSON object from this page (Origin, Content-Type); None once an error is sent."""
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host", ""):
            return self._refuse("cross-origin request refused", HTTPStatus.FORBIDDEN)
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._refuse("send JSON (Content-Type: application/json)", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
            body = None
        if not isinstance(body, dict):
            return self._refuse("the body must be a JSON object", HTTPStatus.BAD_REQUEST)
        return body

    # -------------------------------------------------------------------------------- answers
    def _refuse(self, message: str, status: HTTPStatus) -> None:
        self._send_json({"error": message}, status)
        return None

    def _send_json(self, obj: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(obj).encode(), "application/json", status=status)

    def _send(self, data: bytes, content_type: str, *, status: HTTPStatus = HTTPStatus.OK, csp: str | None = None,
              cache: str = "no-store", headers: dict[str, str] | None = None) -> None:
        """One response; an error one closes the connection (whatever is left of the request is never parsed)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        if csp:
            self.send_header("Content-Security-Policy", f"default-src 'none'; img-src 'self'; connect-src 'self'; "
                             f"style-src 'nonce-{csp}'; script-src 'nonce-{csp}'; base-uri 'none'; form-action 'none'")
        self.end_headers()
        self.wfile.write(data)


# ------------------------------------------------------------------------------------------ the server
class LabelServer(ThreadingHTTPServer):
    """The HTTP server of one labelling session: its secrets, its allowed hosts, its bounded threads."""

    daemon_threads = True
    block_on_close = False    # a stuck client never holds up Ctrl-C; every thread ends within ``timeout``
    request_queue_size = 64

    def __init__(self, host: str, port: int, session: LabelSession, *, allow_host: Iterable[str] = (),
                 timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        self.address_family = _family(host, port)
        self.session = session
        self.token = secrets.token_urlsafe(32)         # in the printed address
        self.cookie_value = secrets.token_urlsafe(32)  # what the browser holds once the token is shown
        self.allowed = allowed_hosts(host, allow_host)
        self.loopback = is_loopback(host)
        self.request_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), LabelHandler)
        self.cookie_name = f"debias_label_{self.server_address[1]}"  # cookies ignore ports: one name per port

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # without HTTPServer's reverse DNS lookup of the address
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            return self._busy(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _busy(self, request: socket.socket) -> None:
        """503 and close, on the accepting thread: a connection over the limit never gets a thread."""
        body = b'{"error": "too many connections to the label server; try again"}'
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nServer: debias\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)


def _family(host: str, port: int) -> socket.AddressFamily:
    """IPv4 or IPv6, as the host address (or name) gives it."""
    try:
        return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as err:
        raise InputError(f"cannot listen on {host}: {err.strerror or err}. Give --host an address of this "
                         "machine (127.0.0.1, ::1, 0.0.0.0) or a name that resolves to one.") from None


def make_server(run_dir: str | Path, labeller: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                per_profession: int = LABELS_FOR_10, seed: int = 0, allow_host: Iterable[str] = (),
                timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> LabelServer:
    """A label server for ``run_dir`` (not started: call ``serve_forever``); ``port=0`` picks a free port."""
    run = load_run(run_dir)
    session = LabelSession(run, sample_for_run(run, per_profession, seed), labeller)
    if not session.sample.items:
        raise InputError(f"{run_dir}: none of the audit's image files is there to label (images/ is empty?).")
    try:
        return LabelServer(host, port, session, allow_host=allow_host, timeout=timeout,
                           max_connections=max_connections)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use (another debias label, or another program); "
                             "choose another with --port N, or --port 0 for any free port.") from err
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}. Check --host and --port.") from err


def address(server: LabelServer) -> str:
    """The address to open, with the session's token."""
    host, port = server.server_address[:2]
    netloc = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return f"http://{netloc}/?token={server.token}"


def serve(run_dir: str | Path, labeller: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          per_profession: int = LABELS_FOR_10, seed: int = 0, allow_host: Iterable[str] = ()) -> None:
    """Start the label server, print its address, and serve until Ctrl-C (nothing is opened)."""
    server = make_server(run_dir, labeller, host=host, port=port, per_profession=per_profession, seed=seed,
                         allow_host=allow_host)
    session = server.session
    state = session.state()
    print(f"labelling {Path(run_dir)} as {session.labeller!r}: {state['total']} images in {len(state['progress'])} "
          f"groups (up to {per_profession} per profession, seed {seed}), {state['labelled']} done", flush=True)
    if not server.loopback:
        names = ", ".join(sorted(server.allowed))
        print(f"warning: listening on {host}, not on loopback: anyone who can reach it and has the address below "
              f"(its token) can label; requests must name one of: {names}, or a loopback address "
              "(--allow-host NAME adds one)", file=sys.stderr, flush=True)
    print(f"open {address(server)} in a browser (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
