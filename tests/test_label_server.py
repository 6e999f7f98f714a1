"""``debias label``'s server without a browser: what it serves, to whom, and how it reads requests.

Every server here listens on 127.0.0.1 (or ::1) on a free port and is spoken to with ``http.client`` or, where
the framing of a request is the point (smuggled, chunked, oversized, slow), with raw sockets. The labelling page
itself is driven in Chromium by ``test_label_browser.py``.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from validity_runs import balanced, key_of, make_run  # noqa: E402

from debias.core.errors import InputError  # noqa: E402
from debias.validity import LabelStore  # noqa: E402
from debias.validity.guards import allowed_hosts, host_allowed  # noqa: E402
from debias.validity.server import address, make_server  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


class Running:
    """A label server in a thread, and ways to talk to it."""

    def __init__(self, run: Path, host: str = "127.0.0.1", **options):
        self.server = make_server(run, "ann", host=host, port=0, **{"per_profession": 3, "seed": 1, **options})
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.host, self.port = host, self.server.server_address[1]
        self.netloc = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.cookie = ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def request(self, method: str, path: str, body: dict | bytes | None = None, *, headers: dict | None = None,
                cookie: bool = True) -> tuple[int, dict, bytes]:
        """One request on a fresh connection: (status, headers with lower-case names, body)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update({"Cookie": self.cookie} if cookie and self.cookie else {})
        try:
            connection.request(method, path, body=data, headers={**sent, **(headers or {})})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def login(self) -> str:
        """Open the printed URL as a browser would: the token is exchanged for a cookie."""
        status, headers, _ = self.request("GET", "/?" + urlsplit(address(self.server)).query, cookie=False)
        assert status == 303 and headers["location"] == "/"
        self.cookie = headers["set-cookie"].split(";", 1)[0]
        return headers["set-cookie"]

    def first_id(self) -> str:
        return self.server.session.sample.items[0].id  # type: ignore[attr-defined]

    def exchange(self, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
        """Send raw bytes on one connection; what came back, and whether the server closed it."""
        return _exchange(self.host, self.port, data, timeout)


def _exchange(host: str, port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            if data:
                sock.sendall(data)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), True
        except socket.timeout:
            pass
    return b"".join(chunks), False


def _post_head(server: Running, length: int | None, *, extra: str = "", path: str = "/api/label") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {server.netloc}\r\nCookie: {server.cookie}\r\n"
            f"Content-Type: application/json\r\n{size}{extra}\r\n").encode()


def _statuses(reply: bytes) -> list[int]:
    return [int(line.split()[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run", {"nurse": balanced(4, 1), "pilot": balanced(4), "cook": balanced(3)})


@pytest.fixture
def server(run):
    running = Running(run)
    yield running
    running.close()


# ------------------------------------------------------------------------------------------ the page's API
def test_server_api_is_blind_and_resumes(run):
    def call(server: Running, path: str, body: dict | None = None) -> bytes:
        status, _, data = server.request("POST" if body is not None else "GET", path, body)
        assert status == 200, data
        return data

    server = Running(run)
    try:
        server.login()
        state = json.loads(call(server, "/api/state"))
        first = state["current"]["id"]
        state = json.loads(call(server, "/api/label", {"id": first, "label": "female"}))
        second = state["current"]["id"]
        state = json.loads(call(server, "/api/skip", {"id": second}))
        third = state["current"]["id"]
        assert len({first, second, third}) == 3 and state["history"] == [first]
        assert json.loads(call(server, f"/api/item/{first}")) == {"id": first, "label": "female"}
        page = call(server, "/").decode()
        assert call(server, f"/image/{third}").startswith(PNG)
        for text in (page, json.dumps(state)):
            for secret in ("nurse", "pilot", "cook", "portrait", key_of("nurse", 0)):
                assert secret not in text
    finally:
        server.close()
    server = Running(run)                                         # a restart forgets skips, not labels
    try:
        server.login()
        state = json.loads(call(server, "/api/state"))
        assert state["current"]["id"] == second and state["labelled"] == 1
    finally:
        server.close()


# ------------------------------------------------------------------------------------------ who may ask
def test_every_route_needs_the_session_cookie(server, run):
    item = server.first_id()
    routes = [("GET", "/"), ("GET", "/api/state"), ("GET", f"/api/item/{item}"), ("GET", f"/image/{item}"),
              ("POST", "/api/label"), ("POST", "/api/skip")]
    for cookie in ("", "debias_label_%d=not-the-token" % server.port):
        server.cookie = cookie
        for method, path in routes:
            body = {"id": item, "label": "female"} if method == "POST" else None
            status, headers, data = server.request(method, path, body)
            assert status == 401, (method, path, status)
            assert b"token" in data and headers["connection"] == "close"
    status, _, data = server.request("GET", "/?token=guessed", cookie=False)
    assert status == 403 and b"printed" in data
    assert not LabelStore(run).path.exists()


def test_the_printed_url_logs_in_with_a_strict_http_only_cookie(server, run):
    url = address(server.server)
    token = server.server.token  # type: ignore[attr-defined]
    assert url == f"http://127.0.0.1:{server.port}/?token={token}" and len(token) >= 40
    cookie = server.login()
    assert cookie.startswith(f"debias_label_{server.port}=")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    assert server.cookie.split("=", 1)[1] != token                 # the cookie is not the token in the URL
    status, headers, page = server.request("GET", "/")
    assert status == 200 and b"Perceived gender" in page
    other = Running(run)
    try:
        assert other.server.token != token                         # a secret per server
        other.cookie = server.cookie                               # another server's cookie opens nothing
        assert other.request("GET", "/api/state")[0] == 401
    finally:
        other.close()


def test_a_foreign_host_name_is_refused_on_every_route(server):
    server.login()
    item = server.first_id()
    for name in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "[::1"):
        for method, path in (("GET", "/"), ("GET", "/api/state"), ("GET", f"/image/{item}"),
                             ("POST", "/api/label"), ("GET", "/?token=x")):
            body = {"id": item, "label": "female"} if method == "POST" else None
            status, _, data = server.request(method, path, body, headers={"Host": name})
            assert status == 403 and b"Host" in data, (name, path, status)
    for name in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "LOCALHOST"):
        assert server.request("GET", "/api/state", headers={"Host": name})[0] == 200
    two = f"GET /api/state HTTP/1.1\r\nHost: {server.netloc}\r\nHost: evil.example\r\nCookie: {server.cookie}\r\n\r\n"
    assert _statuses(server.exchange(two.encode())[0]) == [403]    # which of two would a proxy have read?


def test_the_host_allow_list_holds_on_every_bind():
    """Bound to every address, the list still holds: localhost names, the bound address, and --allow-host."""
    wide = allowed_hosts("0.0.0.0", ["Labelling.example.org"])
    for name in ("localhost:8765", "127.0.0.1", "[::1]:8765", "labelling.example.org:8765"):
        assert host_allowed(name, wide), name
    for name in ("evil.example", "0.0.0.0:8765", "192.168.1.5:8765", "", "[::1", "labelling.example.org.evil.example"):
        assert not host_allowed(name, wide), name
    one = allowed_hosts("192.168.1.5")
    assert host_allowed("192.168.1.5:8765", one) and not host_allowed("192.168.1.6:8765", one)
    assert host_allowed("[fe80::1]:8765", allowed_hosts("fe80::1"))


# ------------------------------------------------------------------------------------------ what it serves
def test_only_png_files_inside_the_run_are_served(run, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    real_png = (run / "images" / f"{key_of('pilot', 0)}.png").read_bytes()
    for name in ("linked.png", "dotdot.png", "absolute.png", "x.png"):
        (outside / name).write_bytes(real_png)                    # PNGs, so only the path check can refuse them
    (outside / "passwd.png").write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    target = run / "images" / f"{key_of('nurse', 0)}.png"
    target.unlink()
    target.symlink_to(outside / "linked.png")                      # a link planted in images/
    (run / "sub").symlink_to(outside, target_is_directory=True)    # a linked folder on the way
    (run / "images" / "notpng.png").write_text("root:x:0:0\n", encoding="utf-8")
    record = json.loads((run / "audit.json").read_text(encoding="utf-8"))
    record["professions"].append({"profession": "odd", "phrase": "an odd", "samples": [
        {"image": image, "label": "female"} for image in
        ("../outside/dotdot.png", str(outside / "absolute.png"), "sub/x.png", "images/notpng.png",
         "images/../../outside/passwd.png")]})
    (run / "audit.json").write_text(json.dumps(record), encoding="utf-8")

    server = Running(run, per_profession=20)
    try:
        server.login()
        ids = {item.key: item.id for item in server.server.session.sample.items}  # type: ignore[attr-defined]
        refused = [key_of("nurse", 0), "dotdot", "absolute", "x", "notpng", "passwd"]
        assert set(refused) <= set(ids)
        for key in refused:
            status, headers, data = server.request("GET", f"/image/{ids[key]}")
            assert status == 404 and headers["content-type"] == "application/json", key
            assert b"root:" not in data and not data.startswith(PNG), key
        status, headers, data = server.request("GET", f"/image/{ids[key_of('pilot', 0)]}")
        assert status == 200 and headers["content-type"] == "image/png" and data == real_png
    finally:
        server.close()


# ------------------------------------------------------------------------------------------ request framing
def test_a_refused_post_never_leaves_its_body_to_be_read_as_a_request(server, run):
    """The body of a refused POST (foreign Origin, wrong type) is a whole label request: it must not be run."""
    server.login()
    inner = json.dumps({"id": server.first_id(), "label": "female"}).encode()
    smuggled = _post_head(server, len(inner)) + inner
    for extra in ("Origin: http://evil.example\r\n", "X-Why: wrong type\r\n"):
        head = _post_head(server, len(smuggled), extra=extra)
        if "wrong type" in extra:
            head = head.replace(b"Content-Type: application/json", b"Content-Type: text/plain")
        reply, closed = server.exchange(head + smuggled)
        assert _statuses(reply) in ([403], [415]) and b"Connection: close" in reply and closed, reply
    assert LabelStore(run).records() == []


def test_bodies_over_the_limit_and_chunked_bodies_are_refused_and_the_connection_closed(server, run):
    server.login()
    inner = json.dumps({"id": server.first_id(), "label": "female"}).encode()
    smuggled = _post_head(server, len(inner)) + inner
    reply, closed = server.exchange(_post_head(server, 70_000))     # declared over 64 KiB: refused before reading
    assert _statuses(reply) == [413] and closed
    padding = b" " * (1 << 16)                                      # 64 KiB of JSON spaces, then a request
    reply, closed = server.exchange(_post_head(server, len(padding) + len(smuggled)) + padding + smuggled)
    assert _statuses(reply) in ([413], []) and closed
    chunked = f"{len(inner):x}\r\n".encode() + inner + b"\r\n0\r\n\r\n"
    for extra in ("Transfer-Encoding: chunked\r\n", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"):
        reply, closed = server.exchange(_post_head(server, None, extra=extra) + chunked + smuggled)
        assert _statuses(reply) in ([411], [501]) and closed, reply
    reply, closed = server.exchange(_post_head(server, None) + inner)  # no length at all
    assert _statuses(reply) == [411] and closed
    get = (f"GET /api/state HTTP/1.1\r\nHost: {server.netloc}\r\nCookie: {server.cookie}\r\n"
           f"Content-Length: {len(smuggled)}\r\n\r\n").encode()
    reply, closed = server.exchange(get + smuggled)                 # a GET with a body
    assert _statuses(reply) == [400] and closed
    assert LabelStore(run).records() == []


def test_every_error_closes_the_connection(server):
    server.login()
    for method, path, body in (("GET", "/nope", None), ("GET", "/image/0000000000000000", None),
                               ("POST", "/api/label", b"[1]"), ("POST", "/api/label", b'{"id": "x", "label": "f"}')):
        status, headers, _ = server.request(method, path, body)
        assert status >= 400 and headers["connection"] == "close", (path, status)
    ok = server.request("GET", "/api/state")
    assert ok[0] == 200 and ok[1].get("connection") != "close"


def test_deeply_nested_json_is_a_400_not_a_dropped_connection(server, run):
    server.login()
    status, headers, data = server.request("POST", "/api/label", b"[" * 60_000)
    assert status == 400 and b"JSON" in data and headers["connection"] == "close"
    assert server.request("GET", "/api/state")[0] == 200               # and the server is still there


# ------------------------------------------------------------------------------------------ slow clients
def test_a_body_that_never_arrives_times_out(run):
    server = Running(run, timeout=0.5)
    try:
        server.login()
        assert make_server.__kwdefaults__["timeout"] <= 30            # the default: seconds, not forever
        start = time.monotonic()
        reply, closed = server.exchange(_post_head(server, 100) + b'{"', timeout=5)
        assert closed and time.monotonic() - start < 4
        assert _statuses(reply) in ([408], [])
        assert server.request("GET", "/api/state")[0] == 200
    finally:
        server.close()


def test_idle_connections_are_bounded(server):
    """Past the cap, a connection is answered 503 and closed at once; the threads stay bounded."""
    from debias.validity.server import MAX_CONNECTIONS

    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        for _ in range(5):
            reply, closed = _exchange("127.0.0.1", server.port, b"", timeout=5)
            assert _statuses(reply) == [503] and closed
        assert threading.active_count() - before <= MAX_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while server.request("GET", "/api/state", cookie=False)[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.05)                                            # the idle ones' threads end as they close
    assert server.request("GET", "/api/state", cookie=False)[0] == 401


# ------------------------------------------------------------------------------------------ small things
def test_the_server_header_names_no_versions(server):
    status, headers, _ = server.request("GET", "/api/state", cookie=False)
    assert status == 401 and headers["server"] == "debias"


def test_ipv6_loopback(run):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = Running(run, host="::1")
    try:
        assert address(server.server).startswith(f"http://[::1]:{server.port}/?token=")
        server.login()
        assert server.request("GET", "/api/state")[0] == 200
    finally:
        server.close()


def test_listening_errors_say_what_to_do(run):
    with pytest.raises(InputError, match=r"cannot listen on no\.such\.host\.invalid"):
        make_server(run, "ann", host="no.such.host.invalid", port=0)
