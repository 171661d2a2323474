"""Bad input and load: bodies bounded, slow clients disconnected, each account throttled on its
own with the model's 429."""

import socket
import time
import urllib.parse

from botocore.exceptions import ClientError

from conftest import make_client


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


def test_each_account_is_throttled_on_its_own(server, new_account, client_b):
    busy = make_client(server, new_account("busy"), checked=False)
    throttled = 0
    for _ in range(400):
        try:
            busy.list_image_pipelines()
        except ClientError as e:
            assert e.response["Error"]["Code"] == "CallRateLimitExceededException", e.response
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            throttled += 1
    assert throttled > 0, "400 requests as fast as one client sends them were all taken"
    client_b.list_image_pipelines()  # another account is not slowed by it
