"""Fixtures for driving a real `kiln serve` with boto3 and the AWS CLI (README.md beside this file).

Every answer a boto3 client of these fixtures receives (and every raw request sent through
`raw`) is checked against botocore's model; a test that received a non-conforming answer fails,
naming the operation, the member path and what is wrong, even when its own assertions passed.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import REGION, unique  # noqa: E402
from model import Answer, ModelChecker, Recorder  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("KILN_API_TEST_START_TIMEOUT", "60"))

RECORDER = Recorder(ModelChecker())


# -- every answer conforms to the model -------------------------------------------------------


def _report(problems) -> str:
    lines = [f"{len(problems)} answer(s) do not conform to botocore's imagebuilder model:"]
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def _conforming():
    @pytest.hookimpl(wrapper=True)
    def hook(item):
        try:
            result = yield
        except Exception as e:
            problems = RECORDER.take()
            if problems:
                e.add_note(_report(problems))
            raise
        problems = RECORDER.take()
        if problems:
            pytest.fail(_report(problems), pytrace=False)
        return result

    return hook


pytest_runtest_setup = _conforming()
pytest_runtest_call = _conforming()
pytest_runtest_teardown = _conforming()


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return RECORDER


# -- kiln ----------------------------------------------------------------------------------------


def kiln_bin() -> Path:
    p = Path(os.environ.get("KILN_BIN") or REPO / "target" / "debug" / "kiln")
    if not p.exists():
        pytest.fail(f"no kiln binary at {p}: run `cargo build -p kiln` or set KILN_BIN", pytrace=False)
    return p


@pytest.fixture(scope="session")
def kiln_home(tmp_path_factory) -> Path:
    given = os.environ.get("KILN_API_TEST_HOME")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("kiln-home")


@dataclass
class Kiln:
    """The kiln binary with the suite's KILN_HOME."""

    bin: Path
    home: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KILN_HOME": str(self.home), "KILN_PLAIN": "1"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.bin), *args], env=self.env(), capture_output=True, text=True,
                           timeout=120)
        if check and p.returncode != 0:
            pytest.fail(f"kiln {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}",
                        pytrace=False)
        return p

    def json(self, *args: str):
        out = self.run(*args).stdout
        try:
            return json.loads(out)
        except ValueError:
            pytest.fail(f"kiln {' '.join(args)} printed no JSON: {out!r}", pytrace=False)

    def has(self, *command: str) -> bool:
        """Whether this kiln knows a subcommand (`kiln serve --help` exits 0)."""
        return self.run(*command, "--help", check=False).returncode == 0


@pytest.fixture(scope="session")
def kiln(kiln_home) -> Kiln:
    return Kiln(kiln_bin(), kiln_home)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class OciRegistry:
    """A docker-registry (CNCF distribution) on a loopback port, and the region of kiln's
    configuration that names it."""

    host: str
    region: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> OciRegistry:
    """A registry the suite's server distributes to: region `kiln-registry` in its
    configuration (`regions:`), namespace `api`."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail("docker-registry is not installed: run `scripts/setup --test`", pytrace=False)
    d = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {d / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([exe, "serve", str(d / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "log", "wb"), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"docker-registry did not listen: {(d / 'log').read_text()}", pytrace=False)
            time.sleep(0.1)
    yield OciRegistry(f"127.0.0.1:{port}", "kiln-registry", proc)
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def server(kiln, registry, tmp_path_factory) -> Server:
    """`kiln serve --listen 127.0.0.1:0`, ready (it said `listening on URL`); stopped with
    SIGTERM at the end of the session, which it must answer by exiting 0. Its configuration
    maps region `kiln-registry` to the suite's registry, and lets components of the suite's
    accounts (none of them an operator account) run in sandboxes, as the suite's container
    builds need: a test that wants them in VMs raises it with the infrastructure configuration's
    tag `kiln:untrustedComponents: vm`."""
    (kiln.home / "config.yaml").write_text(
        f"regions:\n  {registry.region}: {{registry: \"{registry.host}\", namespace: api}}\n"
        "trust:\n  untrustedComponents: sandbox\n")
    if not kiln.has("serve"):
        pytest.skip(f"{kiln.bin} has no `serve` command yet: nothing to test the API against")
    log = tmp_path_factory.mktemp("serve") / "kiln-serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(kiln.bin), "serve", "--listen", "127.0.0.1:0"], env=kiln.env(),
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    server = Server("", proc, log)
    line = _first_line(proc, START_TIMEOUT)
    prefix = "listening on "
    if line is None or not line.startswith(prefix + "http://"):
        proc.kill()
        proc.wait()
        pytest.fail(f"kiln serve did not say `listening on http://...` within {START_TIMEOUT:.0f} s "
                    f"(said {line!r}, exit {proc.returncode}):\n{server.log_tail()}", pytrace=False)
    server.url = line[len(prefix):].strip()
    # Whatever else it prints to stdout must not block it.
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    print(f"kiln serve at {server.url}, KILN_HOME={kiln.home}, log {log}", file=sys.stderr)
    yield server
    if proc.poll() is not None:
        pytest.fail(f"kiln serve died during the suite (exit {proc.returncode}):\n{server.log_tail()}",
                    pytrace=False)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"kiln serve did not stop within 30 s of SIGTERM:\n{server.log_tail()}", pytrace=False)
    if code != 0:
        pytest.fail(f"kiln serve exited {code} on SIGTERM, not 0:\n{server.log_tail()}", pytrace=False)


def _first_line(proc: subprocess.Popen, timeout: float) -> str | None:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            return None
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            return buf.decode(errors="replace") or None
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


# -- accounts and clients ----------------------------------------------------------------------


@dataclass
class Account:
    name: str
    account_id: str
    access_key_id: str
    secret_access_key: str


def _account(kiln: Kiln, server: Server, prefix: str) -> Account:
    if not kiln.has("account", "create"):
        pytest.skip(f"{kiln.bin} has no `account create` command yet")
    out = kiln.json("account", "create", unique(prefix), "-o", "json")
    for key in ("name", "accountId", "accessKeyId", "secretAccessKey"):
        assert key in out, f"kiln account create -o json has no {key}: {out}"
    return Account(out["name"], out["accountId"], out["accessKeyId"], out["secretAccessKey"])


@pytest.fixture(scope="session")
def account_a(kiln, server) -> Account:
    return _account(kiln, server, "api-a")


@pytest.fixture(scope="session")
def account_b(kiln, server) -> Account:
    return _account(kiln, server, "api-b")


@pytest.fixture(scope="session")
def new_account(kiln, server):
    """`new_account("prefix")`: one more account, for tests that need an empty one."""
    return lambda prefix="api": _account(kiln, server, prefix)


def make_client(server: Server, account: Account | None = None, *, key: str | None = None,
                secret: str | None = None, token: str | None = None, signed: bool = True, checked=True):
    """A boto3 Image Builder client for the server, with the model checker attached and no
    retries (a 5xx or 429 must not be hidden)."""
    cfg = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 120}
    if not signed:
        from botocore import UNSIGNED

        cfg["signature_version"] = UNSIGNED
    client = boto3.session.Session().client(
        "imagebuilder",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=key or (account.access_key_id if account else "AKIDNOTHING"),
        aws_secret_access_key=secret or (account.secret_access_key if account else "nothing"),
        aws_session_token=token,
        config=Config(**cfg),
    )
    return RECORDER.attach(client) if checked else client


@pytest.fixture(scope="session")
def client_a(server, account_a):
    return make_client(server, account_a)


@pytest.fixture(scope="session")
def client_b(server, account_b):
    return make_client(server, account_b)


@pytest.fixture(scope="session")
def client_for(server):
    """`client_for(account, key=..., secret=..., token=..., signed=...)`: another client."""
    return lambda account=None, **kw: make_client(server, account, **kw)


# -- the AWS CLI ---------------------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    json: object
    stdout: str
    stderr: str


def aws_cli() -> Path:
    for candidate in (os.environ.get("KILN_AWS_CLI"), Path(sys.executable).parent / "aws", shutil.which("aws")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    pytest.skip("no AWS CLI (aws) beside this python: run `scripts/setup --test`")


@pytest.fixture(scope="session")
def aws(server, account_a):
    """`aws("imagebuilder", "list-components", account=..., check=True)`: the AWS CLI against the
    server, parsed JSON in `.json`; with check=False a failure is returned, not raised."""
    cli = aws_cli()

    def run(*args: str, account: Account | None = None, check: bool = True, env: dict | None = None,
            timeout: float = 120) -> CliResult:
        acct = account or account_a
        e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        e.update({
            "AWS_ACCESS_KEY_ID": acct.access_key_id,
            "AWS_SECRET_ACCESS_KEY": acct.secret_access_key,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard",
        })
        e.update(env or {})
        cmd = [str(cli), "--endpoint-url", server.url, "--region", REGION, "--output", "json", *args]
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
        parsed = None
        if p.stdout.strip():
            try:
                parsed = json.loads(p.stdout)
            except ValueError:
                parsed = None
        if check and p.returncode != 0:
            pytest.fail(f"aws {' '.join(args)} exited {p.returncode}:\n{p.stderr}", pytrace=False)
        return CliResult(p.returncode, parsed, p.stdout, p.stderr)

    return run


# -- raw requests --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def raw(server, account_a):
    """`raw(operation, method, path, body, account=..., sign=True, query=..., secret=...)`: one
    request sent as given (a malformed body, a wrong type botocore would refuse), SigV4-signed
    as botocore signs, its answer checked against the model as `operation`'s. Returns Answer."""

    def send(operation: str | None, method: str, path: str, body: bytes | str | dict = b"", *,
             account: Account | None = None, sign: bool = True, query: dict | None = None,
             secret: str | None = None, headers: dict | None = None,
             server_error_ok: bool = False) -> Answer:
        acct = account or account_a
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        url = server.url.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        h = {"Content-Type": "application/json", **(headers or {})}
        req = AWSRequest(method=method, url=url, data=body, headers=h)
        if sign:
            creds = Credentials(acct.access_key_id, secret or acct.secret_access_key)
            SigV4Auth(creds, "imagebuilder", REGION).add_auth(req)
        prepared = req.prepare()
        r = urllib.request.Request(prepared.url, data=body if method not in ("GET", "DELETE") or body else None,
                                   method=method, headers=dict(prepared.headers.items()))
        try:
            with urllib.request.urlopen(r, timeout=60) as resp:
                answer = Answer(operation or "?", resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as e:
            answer = Answer(operation or "?", e.code, dict(e.headers.items()), e.read())
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            pytest.fail(f"{method} {path}: the server gave no answer ({e!r})", pytrace=False)
        if operation:
            RECORDER.record(answer, server_error_ok=server_error_ok)
        return answer

    return send



# -- notifications -------------------------------------------------------------------------------


@pytest.fixture
def webhook_receiver():
    """A webhook receiver on 127.0.0.1 (`webhooks.Receiver`): `.url`, `.answer(500, ...)`,
    `.down()`/`.up()` on the same port, `.wait_for(match, timeout)`, `.by_id()`; each
    delivery's `.verify(secret)` checks its Standard Webhooks signature. Stopped after the
    test."""
    from webhooks import Receiver

    rx = Receiver().start()
    yield rx
    rx.stop()


@pytest.fixture(scope="session")
def kiln_call(raw):
    """`kiln_call("CreateTopic", {"name": ..., "webhookUrl": ...}, account=...)`: one of kiln's
    own operations (`/kiln/NAME`, signed like the rest, with the method kiln gives it); returns
    the Answer (`.status`, `.json`)."""
    methods = {"CreateTopic": "PUT", "GetTopic": "GET", "ListTopics": "POST", "DeleteTopic": "DELETE",
               "RotateTopicSecret": "PUT", "ListTopicMessages": "GET"}

    def call(name: str, members: dict | None = None, *, account: Account | None = None):
        method = methods[name]
        members = members or {}
        if method in ("GET", "DELETE"):
            return raw(None, method, f"/kiln/{name}", query=members, account=account)
        return raw(None, method, f"/kiln/{name}", members, account=account)

    return call
