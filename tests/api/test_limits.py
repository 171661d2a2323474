"""Bad input and load: bodies bounded, slow clients disconnected, each account throttled on its
own with the model's 429."""

import signal
import socket
import subprocess
import time
import urllib.parse

from botocore.exceptions import ClientError

from conftest import Server, _first_line, make_client


def _host_port(server):
    u = urllib.parse.urlparse(server.url)
    return u.hostname, u.port


def test_a_client_slow_with_its_headers_is_disconnected(server):
    s = socket.create_connection(_host_port(server))
    s.sendall(b"GET /GetImage HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    s.settimeout(40)
    t0 = time.monotonic()
    assert s.recv(100) == b"", "the server answered half a request"
    assert time.monotonic() - t0 < 35


def test_a_body_over_the_limit_is_refused(raw):
    a = raw(None, "PUT", "/CreateComponent", b'{"data":"' + b"x" * (2 << 20) + b'"}')
    assert a.status == 413, (a.status, a.body[:200])
    headers = {k.lower(): v for k, v in a.headers.items()}
    assert headers.get("x-amzn-errortype") == "InvalidRequestException", a.headers


def test_each_account_is_throttled_on_its_own(kiln, new_account, account_b, tmp_path):
    # A server of its own with a tight limit, so that the test does not depend on speed.
    config = tmp_path / "config.yaml"
    config.write_text("serve:\n  requestsPerSecond: 1\n  burst: 5\n")
    env = {**kiln.env(), "KILN_CONFIG": str(config)}
    proc = subprocess.Popen([str(kiln.bin), "serve", "--listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        line = _first_line(proc, 60)
        assert line and line.startswith("listening on http://"), line
        url = line.split()[-1]
        busy = make_client(Server(url, proc, tmp_path), new_account("busy"), checked=False)
        codes = []
        for _ in range(20):
            try:
                busy.list_image_pipelines()
                codes.append(200)
            except ClientError as e:
                codes.append((e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]))
        assert (429, "CallRateLimitExceededException") in codes, codes
        assert set(codes) <= {200, (429, "CallRateLimitExceededException")}, codes
        assert codes[:5] == [200] * 5, codes  # the burst
        # Another account is not slowed by it.
        make_client(Server(url, proc, tmp_path), account_b, checked=False).list_image_pipelines()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
