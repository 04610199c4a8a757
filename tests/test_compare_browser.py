"""Browser test of the compare page: headless Chromium drags the split slider, toggles a mask overlay, and the
screenshots are checked by pixel statistics (split position; overlay colour appears only where the mask is).

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with a clear reason where it is absent.
Chromium is driven with the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (a ~150-line client below):
no driver binary, no Python package, no TCP port, no browser download. Screenshots are kept in
``$CAMPIPE_TEST_ARTIFACTS/compare_browser`` when that variable is set (CI artefacts), else in pytest's tmp_path.

References: Chrome DevTools Protocol (Target, Page, Input, Runtime, Network, Emulation domains); chromium switch
``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated JSON).
"""
from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from campipe.compare_page import PageGroup, PageRender, write_overlays, write_page
from campipe.sidebyside import write_rgb8

pytestmark = pytest.mark.browser


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1", "--mute-audio",
    "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium driven over the DevTools pipe; one page target, flat session."""

    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 30.0):
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="campipe-chromium-")
        to_r, to_w = os.pipe()      # we write -> browser reads on fd 3
        from_r, from_w = os.pipe()  # browser writes on fd 4 -> we read

        def child_fds():
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, pass_fds=(3, 4), close_fds=True)
        os.close(to_r)
        os.close(from_w)
        self._w, self._r = to_w, from_r
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    # ------------------------------------------------------------------ transport
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise CDPError("chromium closed the DevTools pipe (crashed?)")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise CDPError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            if "method" in m:
                self.events.append(m)

    # ------------------------------------------------------------------ helpers
    def goto(self, url: str) -> None:
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CDPError(f"JS error in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.eval(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition never true: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: str | None = None) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path:
            with open(path, "wb") as f:
                f.write(png)
        return png

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        ev = {"down": "mousePressed", "up": "mouseReleased", "move": "mouseMoved"}[kind]
        extra = {"button": "left", "clickCount": 1} if kind in ("down", "up") else {"button": "left" if buttons else "none"}
        self.call("Input.dispatchMouseEvent", type=ev, x=x, y=y, buttons=buttons, **extra)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 8) -> None:
        self.mouse("move", x0, y0)
        self.mouse("down", x0, y0, buttons=1)
        for i in range(1, steps + 1):
            t = i / steps
            self.mouse("move", x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, buttons=1)
        self.mouse("up", x1, y1)

    def click(self, x: float, y: float) -> None:
        self.mouse("move", x, y)
        self.mouse("down", x, y, buttons=1)
        self.mouse("up", x, y)

    def key(self, key: str, code: str, vk: int, shift: bool = False) -> None:
        mods = 8 if shift else 0
        text = key if len(key) == 1 else ""
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, windowsVirtualKeyCode=vk,
                  modifiers=mods, text=text)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk,
                  modifiers=mods)

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def exceptions(self) -> list[dict]:
        return [e["params"] for e in self.events if e["method"] == "Runtime.exceptionThrown"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close")
                except Exception:
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------------------- tests

LEFT, RIGHT = (200, 40, 40), (40, 60, 200)   # solid renders: which side is visible is unambiguous
W, H = 240, 160


def _artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("CAMPIPE_TEST_ARTIFACTS")
    d = Path(base) / "compare_browser" if base else tmp_path / "shots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def page(tmp_path) -> Path:
    renders = []
    for name, col in (("before", LEFT), ("after", RIGHT)):
        rel = f"renders/{name}.png"
        write_rgb8(tmp_path / rel, np.full((H, W, 3), col, np.uint8))
        renders.append(PageRender(name, rel, W, H, {"skin_de": "1.00"}))
    sky = np.zeros((H, W), np.float32)
    sky[: H // 2] = 1.0  # top half
    overlays = write_overlays(tmp_path, {"sky": sky})
    return write_page(tmp_path, [PageGroup("test", renders, overlays)], "browser test")


@pytest.fixture
def browser():
    if find_chromium() is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium chromium-driver)")
    b = Chromium(1280, 800)
    yield b
    b.close()


def settle(b: Chromium) -> None:
    b.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")


def canvas_shot(b: Chromium, path: Path) -> np.ndarray:
    """Screenshot (saved to ``path``) cropped to the viewer canvas, float RGB."""
    settle(b)
    png = b.screenshot(str(path))
    r = b.eval("JSON.stringify(document.getElementById('canvas').getBoundingClientRect())")
    r = json.loads(r)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    x0, y0 = int(np.ceil(r["left"])), int(np.ceil(r["top"]))
    x1, y1 = int(np.floor(r["right"])), int(np.floor(r["bottom"]))
    return img[y0:y1, x0:x1]


def left_fraction(crop: np.ndarray, row: float = 0.7) -> float:
    """Fraction of a pixel row (away from labels and the grip) showing the left (red) render."""
    line = crop[int(row * crop.shape[0])]
    is_left = (line[:, 0] > 150) & (line[:, 2] < 100)
    is_right = (line[:, 2] > 150) & (line[:, 0] < 100)
    assert (is_left | is_right).mean() > 0.97, "the row should show only the two renders (and the split line)"
    return float(is_left.mean())


def canvas_rect(b: Chromium) -> dict:
    return json.loads(b.eval("JSON.stringify(document.getElementById('canvas').getBoundingClientRect())"))


def test_slider_drag_keyboard_and_mask_toggle(page, browser, tmp_path):
    shots = _artifacts(tmp_path)
    b = browser
    b.goto(page.resolve().as_uri())
    b.wait_js("[...document.images].every(i => i.complete && i.naturalWidth > 0) && "
              "document.getElementById('imgR').naturalWidth > 0")
    r = canvas_rect(b)
    assert r["width"] > 2 * W  # fit mode scales the small renders up to the window

    # 1. initial split at 50 %
    s0 = canvas_shot(b, shots / "1_initial.png")
    assert left_fraction(s0) == pytest.approx(0.5, abs=0.02)

    # 2. drag the handle (real mouse events) to 80 %
    cy = r["top"] + 0.5 * r["height"]
    b.drag(r["left"] + 0.5 * r["width"], cy, r["left"] + 0.8 * r["width"], cy)
    s1 = canvas_shot(b, shots / "2_dragged_80.png")
    assert left_fraction(s1) == pytest.approx(0.8, abs=0.02)
    assert b.eval("window.campipeCompare.state.split") == pytest.approx(0.8, abs=0.01)

    # 3. keyboard: two steps left (5 % each) -> 70 %
    b.key("ArrowLeft", "ArrowLeft", 37)
    b.key("ArrowLeft", "ArrowLeft", 37)
    s2 = canvas_shot(b, shots / "3_keys_70.png")
    assert left_fraction(s2) == pytest.approx(0.7, abs=0.02)

    # 4. click the 'sky' checkbox: the overlay colour appears over the top half only
    cb = json.loads(b.eval("JSON.stringify(document.querySelector('aside input[data-key=sky]')"
                           ".getBoundingClientRect())"))
    b.click(cb["left"] + cb["width"] / 2, cb["top"] + cb["height"] / 2)
    s3 = canvas_shot(b, shots / "4_sky_on.png")
    hh, ww = s3.shape[:2]
    top = (slice(int(0.2 * hh), int(0.45 * hh)), slice(int(0.25 * ww), int(0.6 * ww)))   # sky, left render
    bottom = (slice(int(0.6 * hh), int(0.85 * hh)), slice(int(0.25 * ww), int(0.6 * ww)))
    before_top, after_top = s2[top].mean(axis=(0, 1)), s3[top].mean(axis=(0, 1))
    assert after_top[2] - before_top[2] > 60 and before_top[0] - after_top[0] > 40  # red -> towards sky blue
    assert np.abs(s3[bottom] - s2[bottom]).mean() < 1.0                               # no overlay outside the mask
    assert b.eval("document.querySelector('aside input[data-key=sky]').checked") is True

    # 5. keyboard 'S' toggles it off again: back to the plain render
    b.key("s", "KeyS", 83)
    s4 = canvas_shot(b, shots / "5_sky_off.png")
    assert np.abs(s4[top] - s2[top]).mean() < 1.0

    # 6. holding Space shows the left render whole; releasing it restores the split
    b.call("Input.dispatchKeyEvent", type="keyDown", key=" ", code="Space", windowsVirtualKeyCode=32, text=" ")
    assert left_fraction(canvas_shot(b, shots / "6_space_held.png")) > 0.99
    b.call("Input.dispatchKeyEvent", type="keyUp", key=" ", code="Space", windowsVirtualKeyCode=32)
    assert left_fraction(canvas_shot(b, shots / "6_space_released.png")) == pytest.approx(0.7, abs=0.02)

    # 7. difference view: |right - left| x 4 over the whole frame, then back to the split
    b.key("d", "KeyD", 68)
    sd = canvas_shot(b, shots / "7_difference.png")
    hh, ww = sd.shape[:2]
    mid = sd[int(0.3 * hh):int(0.6 * hh), int(0.2 * ww):int(0.8 * ww)].reshape(-1, 3).mean(axis=0)
    expect = np.minimum(255, 4 * np.abs(np.subtract(RIGHT, LEFT)))   # (255, 80, 255)
    assert np.abs(mid - expect).max() < 8, (mid, expect)
    b.key("d", "KeyD", 68)
    assert left_fraction(canvas_shot(b, shots / "7_difference_off.png")) == pytest.approx(0.7, abs=0.02)

    # 8. grid view shows both renders; 1:1 zoom shows image pixels at device pixels
    b.key("g", "KeyG", 71)
    settle(b)
    b.screenshot(str(shots / "8_grid.png"))
    assert b.eval("document.querySelectorAll('#grid figure').length") == 2
    b.key("g", "KeyG", 71)
    b.key("z", "KeyZ", 90)
    settle(b)
    b.screenshot(str(shots / "9_zoom_1to1.png"))
    assert canvas_rect(b)["width"] == pytest.approx(W, abs=1)

    # the page made no network request and raised no JS error
    urls = b.requested_urls()
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert b.exceptions() == []


def test_no_masks_page_explains(tmp_path, browser):
    write_rgb8(tmp_path / "a.png", np.full((20, 30, 3), 90, np.uint8))
    page = write_page(tmp_path, [PageGroup("g", [PageRender("only", "a.png", 30, 20)])], "t")
    browser.goto(page.resolve().as_uri())
    settle(browser)
    text = browser.eval("document.getElementById('side').innerText")
    assert "No masks" in text
    b = browser
    b.key("m", "KeyM", 77)  # toggling with no overlays must not throw
    b.key("ArrowRight", "ArrowRight", 39)
    assert b.exceptions() == []


def test_contact_sheet_opens_a_pair(tmp_path, browser):
    groups = []
    for k, (ca, cb) in enumerate(((LEFT, RIGHT), ((30, 160, 60), (230, 230, 230)))):
        renders = []
        for side, col in (("A", ca), ("B", cb)):
            rel = f"{side}/{k}.png"
            write_rgb8(tmp_path / rel, np.full((60, 90, 3), col, np.uint8))
            renders.append(PageRender(f"run{side}", rel, 90, 60, {"de": "1.00"}, thumb=rel))
        groups.append(PageGroup(f"pair{k}", renders))
    page = write_page(tmp_path, groups, "pairs", start_mode="sheet")
    b = browser
    b.goto(page.resolve().as_uri())
    b.wait_js("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    settle(b)
    b.screenshot(str(_artifacts(tmp_path) / "10_sheet.png"))
    assert b.eval("document.body.className").strip() == "mode-sheet"
    assert b.eval("document.querySelectorAll('#sheet figure').length") == 2
    fig = json.loads(b.eval("JSON.stringify(document.querySelector('#sheet figure[data-g=\"1\"]')"
                            ".getBoundingClientRect())"))
    b.click(fig["left"] + fig["width"] / 2, fig["top"] + fig["height"] / 2)
    b.wait_js("document.getElementById('imgL').complete && document.getElementById('imgR').complete")
    crop = canvas_shot(b, _artifacts(tmp_path) / "11_pair_opened.png")
    line = crop[int(0.7 * crop.shape[0])]
    green = (line[:, 1] > 120) & (line[:, 0] < 80)
    white = line.min(axis=1) > 200
    assert b.eval("document.body.className").strip() == "mode-split"
    assert green.mean() == pytest.approx(0.5, abs=0.03) and white.mean() == pytest.approx(0.5, abs=0.03)
    b.key("ArrowUp", "ArrowUp", 38)   # previous pair
    assert b.eval("window.campipeCompare.state.g") == 0
    assert b.exceptions() == []
