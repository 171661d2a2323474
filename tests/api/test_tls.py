"""`kiln serve --tls-cert --tls-key`: HTTPS that boto3 verifies against the server's certificate;
a certificate that cannot be used is refused before anything listens."""

import signal
import subprocess

import boto3
import pytest
from botocore.config import Config

from conftest import _first_line
from helpers import REGION


def _certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_with_a_certificate(kiln, account_a, tmp_path):
    cert, key = _certificate(tmp_path)
    proc = subprocess.Popen([str(kiln.bin), "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                             "--tls-key", str(key)], env=kiln.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        line = _first_line(proc, 60)
        assert line and line.startswith("listening on https://"), line
        url = line.split()[-1]
        client = boto3.session.Session().client(
            "imagebuilder", endpoint_url=url, region_name=REGION, verify=str(cert),
            aws_access_key_id=account_a.access_key_id, aws_secret_access_key=account_a.secret_access_key,
            config=Config(retries={"max_attempts": 1}))
        assert "componentVersionList" in client.list_components()
        # Plain HTTP to the HTTPS port is not answered as a request.
        plain = boto3.session.Session().client(
            "imagebuilder", endpoint_url=url.replace("https://", "http://"), region_name=REGION,
            aws_access_key_id=account_a.access_key_id, aws_secret_access_key=account_a.secret_access_key,
            config=Config(retries={"max_attempts": 1}, read_timeout=15, connect_timeout=5))
        with pytest.raises(Exception):
            plain.list_components()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_bad_certificate_is_told_at_once(kiln, tmp_path):
    cert, key = _certificate(tmp_path)
    key.write_text("not a key\n")
    r = subprocess.run([str(kiln.bin), "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key)], env=kiln.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert str(key) in r.stderr and "private key" in r.stderr, r.stderr
    assert "listening" not in r.stdout
