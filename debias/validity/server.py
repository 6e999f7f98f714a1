"""``debias label``: a local web page for labelling a run's images blind, one at a time.

A stdlib ``ThreadingHTTPServer`` serves one page (``templates/label.html``, self-contained) and a small JSON
API. The page never learns an image's profession, prompt or classifier label: images are served by an opaque
id (:class:`~debias.validity.labels.SampleItem`), and progress is shown per anonymous stratum number. Every
label is written to ``labels/labels.jsonl`` (fsynced) before the page moves on, so stopping the server at any
moment loses nothing, and a restart continues at the labeller's next unlabelled image.

Routes::

    GET  /                    the page
    GET  /api/state           {"current": {"id", "label"} | null, "progress": […], "history": [ids], …}
    GET  /api/item/<id>       {"id", "label"}: an image already seen (the page's "back")
    GET  /image/<id>          the PNG
    POST /api/label           {"id", "label"} → state      (label: female / male / unclear / no_person)
    POST /api/skip            {"id"} → state               (skipped images come back after the others)

The server binds to 127.0.0.1 by default; there is no login, so ``--host 0.0.0.0`` lets anyone who can reach
the machine label. POSTs must be JSON from the page's own origin, which keeps other web sites from posting
labels through the labeller's browser. A port in use is an error that says what to do (``--port 0`` picks a
free one).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from debias.errors import InputError
from debias.validity.labels import (
    LabelSample, LabelStore, RunImages, check_label, check_labeller, load_run, sample_for_run,
)
from debias.validity.ppi import LABELS_FOR_10

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "label.html"
DEFAULT_PORT = 8765
HISTORY = 200  # ids the page can step back through


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

    def image_path(self, item_id: str) -> Path:
        return self.run.images[self._key(item_id)].path

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
    """Routes of the label page; ``self.server.session`` is the :class:`LabelSession`."""

    server_version = "debias-label"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: the terminal shows the address and errors only

    @property
    def session(self) -> LabelSession:
        return self.server.session  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._host_ok():
            return self._send_json({"error": "unexpected Host header"}, HTTPStatus.FORBIDDEN)
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                nonce = secrets.token_urlsafe(16)
                return self._send(render_page(self.session, nonce).encode(), "text/html; charset=utf-8",
                                  csp=nonce)
            if path == "/api/state":
                return self._send_json(self.session.state())
            if path.startswith("/api/item/"):
                return self._send_json(self.session.item(path.rsplit("/", 1)[1]))
            if path.startswith("/image/"):
                data = self.session.image_path(path.rsplit("/", 1)[1]).read_bytes()
                return self._send(data, "image/png", cache="private, max-age=86400")
        except KeyError:
            return self._send_json({"error": "no such image"}, HTTPStatus.NOT_FOUND)
        except OSError as err:  # the image file went missing after the server started
            return self._send_json({"error": f"cannot read the image: {err.strerror}"}, HTTPStatus.NOT_FOUND)
        self._send_json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self._json_body()
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

    def _json_body(self) -> dict | None:
        """The POST's JSON object, after checking it comes from this page (Host, Origin, Content-Type)."""
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if not self._host_ok() or (origin and urlsplit(origin).netloc != host):
            self._send_json({"error": "cross-origin request refused"}, HTTPStatus.FORBIDDEN)
            return None
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._send_json({"error": "send JSON (Content-Type: application/json)"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(max(length, 0), 1 << 16)) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send_json({"error": "the body must be a JSON object"}, HTTPStatus.BAD_REQUEST)
            return None
        return body

    def _host_ok(self) -> bool:
        """On a loopback bind, only loopback Host names (a web page's DNS rebinding cannot reach the API)."""
        if not self.server.loopback:  # type: ignore[attr-defined]
            return True
        name = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        return name == "localhost" or _is_loopback(name)

    def _send_json(self, obj: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(obj).encode(), "application/json", status=status)

    def _send(self, data: bytes, content_type: str, *, status: HTTPStatus = HTTPStatus.OK, csp: str | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if csp:
            self.send_header("Content-Security-Policy", f"default-src 'none'; img-src 'self'; connect-src 'self'; "
                             f"style-src 'nonce-{csp}'; script-src 'nonce-{csp}'; base-uri 'none'; form-action 'none'")
        self.end_headers()
        self.wfile.write(data)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(run_dir: str | Path, labeller: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                per_profession: int = LABELS_FOR_10, seed: int = 0) -> ThreadingHTTPServer:
    """A label server for ``run_dir`` (not started: call ``serve_forever``); ``port=0`` picks a free port."""
    run = load_run(run_dir)
    session = LabelSession(run, sample_for_run(run, per_profession, seed), labeller)
    if not session.sample.items:
        raise InputError(f"{run_dir}: none of the audit's image files is there to label (images/ is empty?).")
    try:
        server = ThreadingHTTPServer((host, port), LabelHandler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use (another debias label, or another program); "
                             "choose another with --port N, or --port 0 for any free port.") from err
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}. Check --host and --port.") from err
    server.daemon_threads = True
    server.session = session  # type: ignore[attr-defined]
    server.loopback = _is_loopback(host)  # type: ignore[attr-defined]
    return server


def address(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in str(host) else f"http://{host}:{port}/"


def serve(run_dir: str | Path, labeller: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          per_profession: int = LABELS_FOR_10, seed: int = 0) -> None:
    """Start the label server, print its address, and serve until Ctrl-C (nothing is opened)."""
    server = make_server(run_dir, labeller, host=host, port=port, per_profession=per_profession, seed=seed)
    session: LabelSession = server.session  # type: ignore[attr-defined]
    state = session.state()
    print(f"labelling {Path(run_dir)} as {session.labeller!r}: {state['total']} images in {len(state['progress'])} "
          f"groups (up to {per_profession} per profession, seed {seed}), {state['labelled']} done", flush=True)
    if not server.loopback:  # type: ignore[attr-defined]
        print(f"warning: listening on {host}, not on loopback: anyone who can reach it can label (no login)",
              file=sys.stderr, flush=True)
    print(f"open {address(server)} in a browser (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
