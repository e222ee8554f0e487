"""The browser half of vmcheck's testlib: Cockpit's `Browser` names over headless Chromium.

Chromium (Debian's `chromium`) is started on the host on first use and driven over the
Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by a NUL
byte, on its file descriptors 3 and 4), so that nothing listens on any port and no
WebSocket code is needed; the page reaches the machine through its forwarded web port.
Waits poll a JavaScript condition until it holds or their time (`timeout` seconds, times
`TEST_TIMEOUT_FACTOR`) is up, and then fail naming the selector and what was there.
"""

import base64
import fcntl
import json
import struct
import zlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

# What every waiting and inspecting expression can call (Cockpit's `ph_*` helpers, short).
_HELPERS = r"""
function ph_find(sel) {
    const el = document.querySelector(sel);
    if (!el) throw new Error(sel + " not found");
    return el;
}
function ph_is_present(sel) { return !!document.querySelector(sel); }
function ph_is_visible(sel) {
    const el = document.querySelector(sel);
    if (!el) return false;
    const style = getComputedStyle(el);
    return (el.offsetWidth > 0 || el.offsetHeight > 0 || el.getClientRects().length > 0)
        && style.visibility !== "hidden";
}
function ph_text(sel) { return ph_find(sel).textContent; }
function ph_seen(sel) {
    const el = document.querySelector(sel);
    if (!el) return "no element matches " + JSON.stringify(sel);
    return "it is " + (ph_is_visible(sel) ? "visible" : "not visible") + " with text "
        + JSON.stringify(el.textContent.trim().slice(0, 200));
}
"""


class Error(Exception):
    """A browser command failed, or a wait timed out."""


class PixelsError(AssertionError):
    """A pixel test failed: vmcheck does not retry the test."""

    no_retry = True


def decode_png(data):
    """(width, height, RGBA bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Error("not a PNG image")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    if header is None:
        raise Error("a PNG image without a header")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in (2, 6) or interlace:
        raise Error(f"a PNG image of a kind this does not read (depth {depth}, color {color})")
    channels = 4 if color == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous, at = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[at], bytearray(raw[at + 1:at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    pixels = b"".join(rows)
    if channels == 3:
        pixels = b"".join(pixels[i:i + 3] + b"\xff" for i in range(0, len(pixels), 3))
    return width, height, pixels


def encode_png(width, height, rgba):
    """An RGBA PNG image of `rgba`."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    stride = width * 4
    raw = b"".join(b"\0" + rgba[y * stride:(y + 1) * stride] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def compare(old, new):
    """How many pixels differ, and a diff image (width, height, RGBA): the new image faded,
    differing pixels red. Images of different sizes differ in every pixel of either."""
    (ow, oh, op), (nw, nh, np_) = old, new
    width, height = max(ow, nw), max(oh, nh)
    out = bytearray(width * height * 4)
    differing = 0
    for y in range(height):
        for x in range(width):
            o = op[(y * ow + x) * 4:(y * ow + x) * 4 + 4] if x < ow and y < oh else None
            n = np_[(y * nw + x) * 4:(y * nw + x) * 4 + 4] if x < nw and y < nh else None
            at = (y * width + x) * 4
            if o is None or n is None or o != n:
                differing += 1
                out[at:at + 4] = b"\xff\x00\x00\xff"
            else:
                out[at:at + 4] = bytes((v + 255) // 2 for v in n[:3]) + b"\xff"
    return differing, (width, height, bytes(out))


def _timeout_factor():
    try:
        return max(float(os.environ.get("TEST_TIMEOUT_FACTOR", "1")), 1.0)
    except ValueError:
        return 1.0


class Browser:
    """Headless Chromium on the host, driving the machine's web interface.

    `default_address` ("127.0.0.1:NNNNN") is where `open("/path")` goes; `artifacts` the
    directory screenshots and failure evidence are written to. Start-up is lazy.
    """

    def __init__(self, default_address, artifacts=None, timeout=15):
        self.default_address = default_address
        self.artifacts = artifacts or os.getcwd()
        self.timeout = timeout
        self.allowed_errors = []
        self._process = None
        self._session = None
        self._next_id = 0
        self._replies = {}
        self._events = []
        self._lock = threading.Condition()

    # -- the protocol ----------------------------------------------------------------------

    def _start(self):
        if self._process is not None:
            return
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise Error("chromium is not installed (Debian's package chromium: bots/install-deps)")
        self._profile = tempfile.TemporaryDirectory(prefix="vmcheck-browser-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium's ends above 4, so that making them its 3 and 4 overwrites neither.
        to_chrome_r, from_chrome_w = (self._above_4(fd) for fd in (to_chrome_r, from_chrome_w))
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--mute-audio", "--hide-scrollbars",
            "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
            "--window-size=1280,1024", "about:blank",
        ]
        # The pipe must be Chromium's fds 3 (commands in) and 4 (replies out): put there in
        # the child. Everything else Python opened is close-on-exec (PEP 446), so nothing
        # more leaks into Chromium without close_fds (which would close 3 and 4).
        def pipe_fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self._process = subprocess.Popen(
            [chromium, *args],
            close_fds=False,
            preexec_fn=pipe_fds,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
            # Its temporary files (a singleton socket) go with its profile.
            env={**os.environ, "TMPDIR": self._profile.name},
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        threading.Thread(target=self._read, daemon=True).start()
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime"):
            self._send(f"{domain}.enable", {})

    @staticmethod
    def _above_4(fd):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(fd)
        return high

    def _read(self):
        buffer = b""
        while True:
            try:
                data = os.read(self._from_chrome, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._replies[None] = "Chromium closed its pipe (it exited)"
                    self._lock.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                message = json.loads(message)
                with self._lock:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                    self._lock.notify_all()

    def _send(self, method, params, session=True, limit=60):
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message = {"id": number, "method": method, "params": params}
        if session and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + limit
        with self._lock:
            while number not in self._replies:
                if None in self._replies:
                    raise Error(f"{method}: {self._replies[None]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Error(f"{method}: no answer from Chromium within {limit}s")
                self._lock.wait(left)
            reply = self._replies.pop(number)
        if "error" in reply:
            raise Error(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    def kill(self):
        """Stop Chromium (the test's end does)."""
        if self._process is None:
            return
        try:
            self._send("Browser.close", {}, session=False, limit=5)
            self._process.wait(timeout=5)
        except (Error, OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self._process.pid, 9)
        except OSError:
            pass
        self._process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()
        self._process = None

    # -- Cockpit's Browser ---------------------------------------------------------------

    def open(self, href):
        """Load `href`: an absolute URL, or a path on the machine's web port."""
        self._start()
        if not re.match(r"[a-z]+:", href):
            href = f"http://{self.default_address}{href if href.startswith('/') else '/' + href}"
        self._send("Page.navigate", {"url": href})
        self.wait_js_cond('document.readyState === "complete" && location.href !== "about:blank"')

    def eval_js(self, code, no_trace=False):
        """The value of the JavaScript expression `code` (promises awaited) in the page."""
        self._start()
        result = self._send("Runtime.evaluate", {
            "expression": _HELPERS + "\n" + code,
            "returnByValue": True,
            "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise Error(f"JavaScript error in {code!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_js_cond(self, cond, error_description="null", timeout=None):
        """Wait until the JavaScript condition `cond` holds."""
        limit = (timeout or self.timeout) * _timeout_factor()
        deadline = time.monotonic() + limit
        last = None
        while True:
            try:
                if self.eval_js(f"!!({cond})"):
                    return
                last = None
            except Error as e:
                last = e
            if time.monotonic() > deadline:
                seen = self.eval_js(f"String({error_description})") if last is None else str(last)
                raise Error(f"timed out after {limit:g}s waiting for {cond}: {seen}")
            time.sleep(0.1)

    def wait_visible(self, selector):
        self.wait_js_cond(f"ph_is_visible({json.dumps(selector)})", f"ph_seen({json.dumps(selector)})")

    def wait_not_visible(self, selector):
        self.wait_js_cond(f"!ph_is_visible({json.dumps(selector)})", f"ph_seen({json.dumps(selector)})")

    def wait_present(self, selector):
        self.wait_js_cond(f"ph_is_present({json.dumps(selector)})", f"ph_seen({json.dumps(selector)})")

    def wait_text(self, selector, text):
        """Wait until the element's text, trimmed, is `text`."""
        s = json.dumps(selector)
        self.wait_js_cond(f"ph_is_present({s}) && ph_text({s}).trim() === {json.dumps(text)}", f"ph_seen({s})")

    def wait_in_text(self, selector, text):
        """Wait until the element's text contains `text`."""
        s = json.dumps(selector)
        self.wait_js_cond(f"ph_is_present({s}) && ph_text({s}).includes({json.dumps(text)})", f"ph_seen({s})")

    def text(self, selector):
        """The element's text, trimmed."""
        self.wait_present(selector)
        return self.eval_js(f"ph_text({json.dumps(selector)}).trim()")

    def val(self, selector):
        self.wait_present(selector)
        return self.eval_js(f"ph_find({json.dumps(selector)}).value")

    def _center(self, selector):
        self.wait_visible(selector)
        return self.eval_js(
            f"(() => {{ const el = ph_find({json.dumps(selector)}); el.scrollIntoView({{block: 'center'}});"
            " const r = el.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )

    def click(self, selector):
        """A real mouse click (pressed and released) in the middle of the element."""
        x, y = self._center(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y}
            if kind != "mouseMoved":
                params.update(button="left", clickCount=1)
            self._send("Input.dispatchMouseEvent", params)

    def focus(self, selector):
        self.wait_visible(selector)
        self.eval_js(f"ph_find({json.dumps(selector)}).focus()")

    def set_input_text(self, selector, text):
        """Replace the input's value with `text`, typed (input events fire as for a user)."""
        self.focus(selector)
        self.eval_js(f"(() => {{ const el = ph_find({json.dumps(selector)}); el.select && el.select(); }})()")
        self._send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Backspace", "code": "Backspace",
                                              "windowsVirtualKeyCode": 8})
        self._send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Backspace", "code": "Backspace",
                                              "windowsVirtualKeyCode": 8})
        if text:
            self._send("Input.insertText", {"text": text})
        self.wait_js_cond(f"ph_find({json.dumps(selector)}).value === {json.dumps(text)}")

    _KEYS = {"\r": ("Enter", 13), "\n": ("Enter", 13), "\t": ("Tab", 9), "\b": ("Backspace", 8),
             "\x1b": ("Escape", 27)}

    def key_press(self, keys):
        """Press each key of `keys` in the focused element ("\\r" is Enter)."""
        self._start()
        for c in keys:
            name, code = self._KEYS.get(c, (c, ord(c.upper()) if len(c) == 1 else 0))
            down = {"type": "keyDown", "key": name, "windowsVirtualKeyCode": code}
            if c not in self._KEYS:
                down["text"] = c
            elif name == "Enter":
                down["text"] = "\r"
            self._send("Input.dispatchKeyEvent", down)
            self._send("Input.dispatchKeyEvent", {"type": "keyUp", "key": name, "windowsVirtualKeyCode": code})

    def screenshot(self, name):
        """Save the page as `<name>.png` among the attempt's artifacts; its path."""
        self._start()
        data = base64.b64decode(self._send("Page.captureScreenshot", {"format": "png"})["data"])
        os.makedirs(self.artifacts, exist_ok=True)
        path = os.path.join(self.artifacts, f"{name}.png")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assert_pixels(self, selector, key, ignore=(), reference_dir=None, tolerance=20):
        """Compare the element's pixels with the reference image `<key>-pixels.png`.

        References are in `reference_dir` (default `test/reference` of the project). Up to
        `tolerance` pixels may differ (Cockpit's 20); `ignore` lists selectors of parts to
        leave out (painted over on both). On a mismatch, or without a reference, the new
        image and a diff image (differing pixels in red) are saved as artifacts and the test
        fails with a `PixelsError`, which vmcheck never retries (a picture does not flake).
        """
        self.wait_visible(selector)
        for sel in ignore:
            self.eval_js(f"document.querySelectorAll({json.dumps(sel)}).forEach(e => e.style.visibility = 'hidden')")
        rect = self.eval_js(
            f"(() => {{ const r = ph_find({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()"
        )
        x, y, w, h = rect
        data = base64.b64decode(self._send("Page.captureScreenshot", {
            "format": "png",
            "clip": {"x": x, "y": y, "width": w, "height": h, "scale": 1},
            "captureBeyondViewport": True,
        })["data"])
        new = decode_png(data)
        reference_dir = reference_dir or os.path.join(os.getcwd(), "test", "reference")
        name = f"{key}-pixels.png"
        os.makedirs(self.artifacts, exist_ok=True)
        reference = os.path.join(reference_dir, name)
        if not os.path.exists(reference):
            with open(os.path.join(self.artifacts, name), "wb") as f:
                f.write(data)
            raise PixelsError(f"{reference}: no reference image; the new one is "
                              f"{os.path.join(self.artifacts, name)} (copy it there if it is right)")
        with open(reference, "rb") as f:
            old = decode_png(f.read())
        differing, diff = compare(old, new)
        if differing > tolerance:
            with open(os.path.join(self.artifacts, name), "wb") as f:
                f.write(data)
            diff_path = os.path.join(self.artifacts, f"{key}-pixels.diff.png")
            with open(diff_path, "wb") as f:
                f.write(encode_png(*diff))
            size = "" if old[:2] == new[:2] else f" (the reference is {old[0]}x{old[1]}, the page {new[0]}x{new[1]})"
            raise PixelsError(f"{key}: {differing} pixels differ from {reference}{size}; "
                              f"the new image and the diff are in {self.artifacts}")

    # -- what the page said --------------------------------------------------------------

    def allow_errors(self, *patterns):
        """Allow JavaScript errors matching these regexes for the rest of the test."""
        self.allowed_errors.extend(patterns)

    def errors(self):
        """The JavaScript errors so far (thrown, or logged with console.error) not allowed."""
        found = []
        with self._lock:
            events = list(self._events)
        for e in events:
            params = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                text = d.get("exception", {}).get("description") or d.get("text", "")
            elif e.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            else:
                continue
            if not any(re.search(p, text) for p in self.allowed_errors):
                found.append(text)
        return found

    def console(self):
        """Every console message so far, one line each."""
        with self._lock:
            events = list(self._events)
        lines = []
        for e in events:
            params = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                lines.append(f"{params.get('type')}: {text}")
            elif e.get("method") == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                lines.append(f"exception: {d.get('exception', {}).get('description') or d.get('text', '')}")
        return lines

    def save_evidence(self, name):
        """After a failure: a screenshot, the page's HTML and the console log."""
        if self._process is None:
            return []
        saved = []
        try:
            saved.append(self.screenshot(name))
            html = self.eval_js("document.documentElement.outerHTML")
            path = os.path.join(self.artifacts, f"{name}.html")
            with open(path, "w") as f:
                f.write(html or "")
            saved.append(path)
        except Error:
            pass
        path = os.path.join(self.artifacts, f"{name}.console.log")
        with open(path, "w") as f:
            f.write("\n".join(self.console()) + "\n")
        saved.append(path)
        return saved
