"""browser — headless Chromium (Debian's chromium package) driven over the
DevTools protocol, for the tests of the relay's dashboard.

Chromium runs with ``--remote-debugging-pipe``: the protocol's JSON
messages, each ended by a NUL byte, go in on the child's fd 3 and come out
on its fd 4, so nothing listens on a port and nothing but this process can
drive it.  A reader thread collects answers and events.

* ``Browser``: one Chromium with a fresh profile in a directory the test
  gives, trusting the certificates passed as ``trust`` (by their SPKI
  hashes, ``--ignore-certificate-errors-spki-list``) and nothing else it
  would not trust anyway.  ``page()`` opens a tab in a browser context of
  its own (cookies and storage apart from every other tab).
* ``Page``: navigate, evaluate JavaScript (returning values by value),
  wait for a JavaScript condition, click an element where a person would
  (mouse events at its centre), take a screenshot.  Everything the page
  reports as a problem is kept in ``problems``: console errors and
  warnings, uncaught exceptions, failed loads, CSP violations, and
  JavaScript dialogs (``alert``: a script that should never run would
  open one); ``assert_clean`` fails on any of them.

Every wait is bounded (relaytest.TIMEOUT), and ``close`` kills Chromium and
its children.
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

import relaytest

T = relaytest.TIMEOUT
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--no-default-browser-check", "--password-store=basic", "--use-mock-keychain",
         "--remote-debugging-pipe", "--window-size=1280,900"]


def spki_hash(cert_path):
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class CdpError(relaytest.TestError):
    pass


class Browser:
    def __init__(self, directory, trust=()):
        self.dir = str(directory)
        profile = os.path.join(self.dir, "profile")
        os.makedirs(profile, exist_ok=True)
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        argv = [CHROMIUM] + FLAGS + ["--user-data-dir=" + profile]
        if trust:
            argv.append("--ignore-certificate-errors-spki-list=" + ",".join(
                spki_hash(c) for c in trust))
        argv.append("about:blank")

        def child_fds():
            # fd 3 and 4 as Chromium expects them; the pipe ends may be
            # sitting on 3 or 4 themselves, so go through high numbers.
            a, b = os.dup(to_child_r) + 100, os.dup(from_child_w) + 100
            os.dup2(to_child_r, a)
            os.dup2(from_child_w, b)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(os.path.join(self.dir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, preexec_fn=child_fds, pass_fds=(3, 4),
                                     start_new_session=True, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._lock = threading.Condition()
        self._next_id = 0
        self._answers = {}
        self._events = []  # (sessionId, method, params)
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": True})

    # ---- the pipe -------------------------------------------------------------

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self._events.append((msg.get("sessionId"), msg["method"],
                                             msg.get("params", {})))
                    self._lock.notify_all()
                if msg.get("method") == "Page.javascriptDialogOpening":
                    # Dismissed at once (a dialog would stop the page), and
                    # kept among the events: see Page.problems.
                    threading.Thread(target=self._dismiss, args=(msg.get("sessionId"),),
                                     daemon=True).start()
        with self._lock:
            self._eof = True
            self._lock.notify_all()

    def _dismiss(self, session):
        try:
            self.send("Page.handleJavaScriptDialog", {"accept": False}, session=session)
        except CdpError:
            pass

    def send(self, method, params=None, session=None, timeout=T):
        with self._lock:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._answers:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise CdpError("%s: no answer from Chromium (%s)\n%s" % (
                        method, "it exited" if self._eof else "timed out", self.log_tail()))
                self._lock.wait(min(left, 0.5))
            answer = self._answers.pop(mid)
        if "error" in answer:
            raise CdpError("%s: %s" % (method, answer["error"]))
        return answer.get("result", {})

    def events(self, session=None, method=None):
        with self._lock:
            return [(m, p) for s, m, p in self._events
                    if (session is None or s == session) and (method is None or m == method)]

    def wait_event(self, session, method, pred=None, timeout=T, start=0):
        """The first event `method` of `session` from index `start` of that
        session's events on, matching pred; returns (index, params)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                mine = [(m, p) for s, m, p in self._events if s == session]
                for i in range(start, len(mine)):
                    m, p = mine[i]
                    if m == method and (pred is None or pred(p)):
                        return i, p
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise CdpError("no %s event\n%s" % (method, self.log_tail()))
                self._lock.wait(min(left, 0.5))

    def log_tail(self, n=4000):
        try:
            with open(os.path.join(self.dir, "chromium.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- tabs -------------------------------------------------------------------

    def page(self):
        ctx = self.send("Target.createBrowserContext", {"disposeOnDetach": True})
        target = self.send("Target.createTarget", {"url": "about:blank",
                                                   "browserContextId": ctx["browserContextId"]})
        att = self.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                  "flatten": True})
        return Page(self, att["sessionId"], target["targetId"])

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser, session, target_id):
        self.b, self.session, self.target_id = browser, session, target_id
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(domain + ".enable")

    def send(self, method, params=None, timeout=T):
        return self.b.send(method, params, session=self.session, timeout=timeout)

    def _events(self, method=None):
        return self.b.events(self.session, method)

    @property
    def problems(self):
        out = []
        for m, p in self._events():
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append("console.%s: %s" % (p["type"], " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", []))))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: %s %s" % (d.get("text"), d.get("exception", {}).get(
                    "description", "")))
            elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                e = p["entry"]
                out.append("log %s/%s: %s %s" % (e.get("source"), e["level"], e.get("text"),
                                                 e.get("url", "")))
            elif m == "Page.javascriptDialogOpening":
                out.append("dialog %s: %s" % (p.get("type"), p.get("message")))
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append("load failed: %s %s" % (p.get("errorText"), p.get("blockedReason", "")))
        return out

    def assert_clean(self):
        assert not self.problems, "the page reported problems:\n" + "\n".join(self.problems)

    def dialogs(self):
        return [p for _, p in self._events("Page.javascriptDialogOpening")]

    def requests(self):
        """The URLs the page asked for, in order."""
        return [p["request"]["url"] for _, p in self._events("Network.requestWillBeSent")]

    def goto(self, url, timeout=T):
        start = len(self._events())
        r = self.send("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise CdpError("navigating to %s: %s" % (url, r["errorText"]))
        self.b.wait_event(self.session, "Page.loadEventFired", timeout=timeout, start=start)

    def eval(self, expr, timeout=T):
        """The value of a JavaScript expression (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True, "userGesture": True},
                      timeout=timeout)
        if "exceptionDetails" in r:
            raise CdpError("%s: %s" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait_for(self, expr, timeout=T, what=None):
        """Polls until expr is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.eval(expr)
            except CdpError as e:
                last = e
            if last and not isinstance(last, CdpError):
                return last
            if time.monotonic() > deadline:
                raise relaytest.TestError("page: timed out waiting for %s (last %r)\nproblems: %s"
                                          % (what or expr, last, self.problems))
            time.sleep(0.1)

    def click(self, element_expr):
        """A left click at the centre of the element expr evaluates to, with
        mouse events as a person's would be (the page sees a trusted click)."""
        box = self.eval("(() => { const e = %s; e.scrollIntoView({block: 'center'});"
                        " const r = e.getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()" % element_expr)
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def type_text(self, text):
        self.send("Input.insertText", {"text": text})

    def url(self):
        return self.eval("location.href")

    def screenshot(self, path):
        r = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return path

    def close(self):
        try:
            self.b.send("Target.closeTarget", {"targetId": self.target_id})
        except CdpError:
            pass
