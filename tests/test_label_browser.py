"""``debias label`` in a real browser: the CLI's server, driven in headless Chromium through the DevTools protocol.

A labeller opens the printed address (its token is traded for a cookie the page's script cannot read), presses
keys and clicks buttons; the server is killed mid-way (SIGKILL) and restarted. Checked: a request without the
cookie is refused, each label given is in ``labels/labels.jsonl`` exactly once, the page resumes at the next
unlabelled image, the page is blind (no profession, prompt or classifier label in it or in its image URLs), a
hostile labeller name stays text, and a screenshot is not blank. Chromium is the Debian package ``chromium``
(``make browser``); the DevTools websocket is spoken with ``websocket-client`` (a test dependency).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageStat

sys.path.insert(0, str(Path(__file__).parent))

from validity_runs import balanced, make_run  # noqa: E402

EVIL = "<script>alert(1)</script>"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1100,900"]
KEYS = {"f": ("KeyF", 70), "m": ("KeyM", 77), "u": ("KeyU", 85), "n": ("KeyN", 78), "s": ("KeyS", 83),
        "b": ("KeyB", 66), "Backspace": ("Backspace", 8)}
PROFESSIONS = {"nurse": balanced(6), "pilot": balanced(5), "cook": balanced(4)}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is needed for the label page test: run 'make browser' (or 'apt-get install chromium').")


def _read_line(stream, pattern: str, timeout: float, proc: subprocess.Popen) -> re.Match:
    """Read lines from ``stream`` until one matches ``pattern`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    pytest.fail(f"no line matching {pattern!r} (exit {proc.poll()}):\n{''.join(seen)[-2000:]}")


class Server:
    """``python -m debias label`` as a subprocess (the real CLI)."""

    def __init__(self, run: Path, port: int = 0):
        env = dict(os.environ, DEBIAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "debias", "label", str(run), "--labeller", EVIL, "--port", str(port),
             "--per-profession", "3", "--seed", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=Path(__file__).parents[1])
        found = _read_line(self.proc.stdout, r"open (http://127\.0\.0\.1:(\d+)/\?token=[\w-]+) ", 60, self.proc)
        self.url, self.port = found.group(1), int(found.group(2))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


class Browser:
    """Headless Chromium and one page, spoken to over the DevTools protocol."""

    def __init__(self, profile: str):
        import websocket  # websocket-client

        self.proc = subprocess.Popen([_chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ws = _read_line(self.proc.stderr, r"DevTools listening on (ws://\S+)", 60, self.proc).group(1)
        port = re.search(r":(\d+)/", ws).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_ready(self, previous: str | None = None, timeout: float = 20) -> str:
        """Wait until the page shows an image other than ``previous`` (or says it is done); its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, shown = self.js("window.__stale || !document.body ? ['', ''] : "
                                   "[document.body.dataset.state, document.body.dataset.shown || '']")
            if state in ("ready", "done") and shown != previous:
                return shown
            time.sleep(0.02)
        raise AssertionError(f"the page did not move on from {previous!r}: {self.js('document.body.outerHTML')[-1500:]}")

    def open(self, url: str) -> str:
        self.js("window.__stale = true")  # the page before navigating: never mistaken for the new one
        self.call("Page.navigate", {"url": url})
        return self.wait_ready(previous="__never__")

    def press(self, key: str) -> None:
        code, vk = KEYS[key]
        text = {"text": key} if len(key) == 1 else {}
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk,
                                                 **(text if kind == "keyDown" else {})})

    def click(self, selector: str) -> None:
        x, y = self.js(f"(function(){{var r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                       "return [r.x + r.width / 2, r.y + r.height / 2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _on_disk(run: Path) -> list[tuple[str, str]]:
    lines = (run / "labels" / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    return [(json.loads(x)["key"], json.loads(x)["label"]) for x in lines if x.strip()]


@pytest.mark.slow
def test_label_page_in_chromium_survives_a_killed_server(tmp_path):
    run = make_run(tmp_path / "run", PROFESSIONS)
    server = Server(run)
    profile = tempfile.mkdtemp(prefix="debias-chromium-")
    browser = Browser(profile)
    try:
        shown = browser.open(server.url)
        # logged in: the token left the address bar, the cookie is invisible to scripts, and without it nothing
        assert browser.js("location.href") == f"http://127.0.0.1:{server.port}/"
        assert browser.js("document.cookie") == ""
        without = "{credentials: 'omit', cache: 'no-store'}"
        for path in ("'/api/state'", "'/image/' + document.body.dataset.shown", "'/'"):
            assert browser.js(f"fetch({path}, {without}).then(r => r.status)") == 401, path
        assert browser.js("fetch('/api/state').then(r => r.status)") == 200
        sample = json.loads((run / "labels" / "sample.json").read_text(encoding="utf-8"))
        ids = {item["id"]: item["key"] for item in sample["items"]}   # opaque id → key (server-side file)
        order = [item["id"] for item in sample["items"]]
        assert shown == order[0] and len(order) == 9

        given: list[tuple[str, str]] = []          # (key, label) for every label the labeller gave
        for action, label in (("f", "female"), ("m", "male"), ("click:no_person", "no_person")):
            if action.startswith("click:"):
                browser.click(f'button[data-action="{action[6:]}"]')
            else:
                browser.press(action)
            given.append((ids[shown], label))
            shown = browser.wait_ready(shown)
        assert shown == order[3]
        browser.press("s")                          # skip order[3]
        shown = browser.wait_ready(shown)
        assert shown == order[4]
        browser.press("b")                          # back to the third image, labelled "no_person"
        shown = browser.wait_ready(shown)
        assert shown == order[2] and "no person" in browser.js("document.getElementById('note').textContent")
        browser.press("Backspace")                  # and one more back
        shown = browser.wait_ready(shown)
        assert shown == order[1]
        browser.press("u")                          # relabel: the later line wins
        given.append((ids[shown], "unclear"))
        shown = browser.wait_ready(shown)
        assert shown == order[4]                    # the next unlabelled image that was not skipped
        assert _on_disk(run) == given               # every label on disk, exactly once, at once

        # blind: nothing on the page names a profession, a prompt or the classifier's label
        html = browser.js("document.documentElement.outerHTML")
        for secret in ("nurse", "pilot", "cook", "portrait", "at work", *ids.values()):
            assert secret not in html
        assert re.fullmatch(r"/image/[0-9a-f]{16}", browser.js("new URL(document.getElementById('photo').src).pathname"))
        # the hostile name is text: shown literally, no script element added, no dialog opened
        assert browser.js("document.getElementById('labeller').textContent") == EVIL
        assert browser.js("document.querySelectorAll('script').length") == 2
        assert not [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]

        png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"})["data"])
        img = Image.open(io.BytesIO(png)).convert("L")
        assert img.size[0] >= 800 and ImageStat.Stat(img).stddev[0] > 15   # a page with an image and text
        frame = browser.js("(function(){var r = document.getElementById('photo').getBoundingClientRect();"
                           "return [r.width, r.height];})()")
        assert min(frame) >= 256                                            # 32 px images, upscaled to judge

        server.kill()                               # mid-way: 4 of 9 labelled, one skipped
        server = Server(run, port=server.port)
        shown = browser.open(server.url)
        labelled = {key for key, _ in given}
        assert shown == next(i for i in order if ids[i] not in labelled) == order[3]   # skips are forgotten
        assert browser.js("document.getElementById('count').textContent").startswith("3 / 9")
        while shown:
            browser.press("m")
            given.append((ids[shown], "male"))
            shown = browser.wait_ready(shown)
        assert browser.js("document.body.dataset.state") == "done"
        assert _on_disk(run) == given
        assert {key for key, _ in given} == set(ids.values())
    finally:
        browser.close()
        server.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_a_port_in_use_is_a_clear_error(tmp_path):
    run = make_run(tmp_path / "run", {"nurse": balanced(2)})
    server = Server(run)
    try:
        proc = subprocess.run([sys.executable, "-m", "debias", "label", str(run), "--port", str(server.port)],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
        assert proc.returncode == 2
        assert f"port {server.port} on 127.0.0.1 is in use" in proc.stderr and "--port 0" in proc.stderr
    finally:
        server.kill()
