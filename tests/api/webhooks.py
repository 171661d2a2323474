"""A webhook receiver on loopback for the notification tests: records every delivery, answers
as a test scripts it, can go down and come back on the same port, and verifies Standard
Webhooks signatures (with the `standardwebhooks` package when it is installed, else by hand).

    rx = Receiver().start()          # rx.url is http://127.0.0.1:PORT/hook
    rx.answer(500, 500)              # the next two deliveries get 500, then 200 again
    rx.down(); ...; rx.up()          # refused connections meanwhile; the same port after
    d = rx.wait_for(lambda d: d.type == "image.available", timeout=600)
    assert d.verify(secret)          # the signature checks with the topic's secret
    rx.by_id()                       # webhook-id -> how many times it arrived
    rx.stop()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def type(self) -> str | None:
        try:
            return self.payload.get("type")
        except ValueError:
            return None

    def verify(self, secret: str) -> bool:
        """Whether the delivery is signed with `secret`, checked as a receiver would."""
        try:
            from standardwebhooks import Webhook
        except ImportError:
            return verify_by_hand(secret, self.headers, self.body)
        try:
            Webhook(secret).verify(self.body, self.headers)
            return True
        except Exception:
            return False


def verify_by_hand(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The Standard Webhooks check in a few lines: HMAC-SHA256 over id.timestamp.body."""
    msg_id, ts, sigs = (headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and ts and sigs) or abs(time.time() - int(ts)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return any(v == "v1" and hmac.compare_digest(s, expected)
               for v, _, s in (p.partition(",") for p in sigs.split(" ")))


class Receiver:
    """A webhook receiver on 127.0.0.1 (see the module's doc)."""

    def __init__(self, port: int = 0, path: str = "/hook"):
        self.port = port
        self.path = path
        self.deliveries: list[Delivery] = []
        self._script: deque[int] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def answer(self, *statuses: int) -> None:
        """The next deliveries get these statuses, in order; then 200 again."""
        with self._lock:
            self._script.extend(statuses)

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver._script.popleft() if receiver._script else 200
                    receiver.deliveries.append(
                        Delivery({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        """Stops listening: deliveries meanwhile find the port closed."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def up(self) -> "Receiver":
        """Listens again on the same port."""
        return self.start()

    stop = down

    def by_id(self) -> Counter:
        """How many times each webhook-id arrived (accepted or not)."""
        with self._lock:
            return Counter(d.id for d in self.deliveries)

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def wait_for(self, match=lambda d: True, timeout: float = 60, accepted: bool = True) -> Delivery:
        """The first delivery `match` takes (answered 2xx unless accepted=False), waiting up to
        `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [d for d in self.deliveries if match(d) and (not accepted or 200 <= d.status < 300)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching delivery within {timeout:.0f} s (got {len(self.deliveries)})")
            time.sleep(0.2)
