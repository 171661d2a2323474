"""Checks kiln's HTTP answers against botocore's model of EC2 Image Builder.

One generic checker, driven by the service model (botocore's
``imagebuilder/2019-12-02/service-2.json``), instead of one hand-written assertion per operation:

* a 2xx answer's JSON body holds only members of the operation's output shape, each of the
  model's type (recursively through structures, lists and maps), every ``required`` member,
  enum values from the enum, strings matching the model's ``pattern`` and ``min``/``max``;
* an error answer is 4xx (5xx only where the caller allows it), carries ``x-amzn-ErrorType``,
  a JSON body with ``__type`` and ``message`` (or ``Message``), a code the operation declares
  (or an authentication error, or one of the few service-wide exceptions Image Builder returns
  beyond the per-operation lists, see ``SERVICE_WIDE_ERRORS``), with the status the model gives
  that exception.

``Recorder`` collects every answer a boto3 client receives (botocore's ``after-call`` event) so
that a test fails when any answer it caused does not conform, naming the operation, the member
path (``image.outputResources.containers[0].imageUris[1]``) and what is wrong.

kiln's ARNs use the partition ``kiln`` and the region ``local`` where the model's patterns say
``arn:aws...`` and ``us-east-1``-like regions; the checker widens exactly those parts of the
patterns (``partitions``, ``regions``) and nothing else.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import botocore.session

# Errors any operation may answer, whatever the model declares: SigV4 and throttling errors
# that AWS's front end gives before an operation runs (their status is fixed here, the model
# has no shape for most of them).
AUTH_ERRORS = {
    "UnrecognizedClientException": {403},
    "InvalidSignatureException": {403},
    "IncompleteSignatureException": {400, 403},
    "MissingAuthenticationTokenException": {403},
    "AccessDeniedException": {403},
    "TooManyRequestsException": {429},
}

# Exceptions the model defines but declares only on some operations, which Image Builder
# answers on others too (GetComponent of a missing ARN is ResourceNotFoundException, 404, though
# GetComponent declares no such error; CreateComponent of an existing name and version with
# other content is ResourceAlreadyExistsException; a bad field is InvalidParameterValueException
# on every operation). Their status is the model's.
SERVICE_WIDE_ERRORS = {
    "ResourceNotFoundException",
    "ResourceAlreadyExistsException",
    "InvalidParameterValueException",
    "InvalidParameterException",
    "InvalidVersionNumberException",
    "ResourceDependencyException",
}

_warned_patterns: set[str] = set()


def error_code(raw: str) -> str:
    """An error code as botocore reads it from ``x-amzn-ErrorType`` or ``__type``."""
    code = raw.split(":", 1)[0]
    if "#" in code:
        code = code.rsplit("#", 1)[1]
    return code.strip()


@dataclass
class Problem:
    """One way an answer departs from the model."""

    operation: str
    path: str
    what: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.operation}{where}: {self.what}"


@dataclass
class Answer:
    """One HTTP answer as received: what the checker reads."""

    operation: str
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else {}


class ModelChecker:
    """Checks answers of one service against its botocore model."""

    def __init__(
        self,
        service: str = "imagebuilder",
        *,
        service_model=None,
        partitions: Iterable[str] = ("kiln",),
        regions: Iterable[str] = ("local",),
    ):
        self.model = service_model or botocore.session.get_session().get_service_model(service)
        self.partitions = tuple(partitions)
        self.regions = tuple(regions)
        self._patterns: dict[str, re.Pattern | None] = {}
        self.skipped_patterns: list[str] = []

    # -- patterns ---------------------------------------------------------------------------

    def _widen(self, pattern: str) -> str:
        """The model's pattern with kiln's partition and regions allowed in ARNs."""
        if self.partitions:
            extra = "|".join(re.escape(p) for p in self.partitions)
            for aws in ("arn:aws[^:]*:", "arn:aws(?:-[a-z]+)*:"):
                pattern = pattern.replace(aws, f"arn:(?:{aws[4:-1]}|{extra}):")
        if self.regions:
            extra = "|".join(re.escape(r) for r in self.regions)
            region = "[a-z]{2,}(?:-[a-z]+)+-[0-9]+"
            pattern = pattern.replace(region, f"(?:{region}|{extra})")
        return pattern

    def pattern(self, shape) -> re.Pattern | None:
        """The compiled pattern of a string shape, or None (none, or one Python can't compile:
        said once on stderr)."""
        raw = shape.metadata.get("pattern")
        if raw is None:
            return None
        if raw not in self._patterns:
            try:
                self._patterns[raw] = re.compile(self._widen(raw))
            except re.error as e:
                self._patterns[raw] = None
                self.skipped_patterns.append(raw)
                if raw not in _warned_patterns:
                    _warned_patterns.add(raw)
                    print(
                        f"model.py: not checking pattern of {shape.name} ({raw!r}): "
                        f"Python can't compile it: {e}",
                        file=sys.stderr,
                    )
        return self._patterns[raw]

    # -- answers ----------------------------------------------------------------------------

    def check(self, answer: Answer, *, server_error_ok: bool = False) -> list[Problem]:
        """Every problem of one answer, success or error."""
        if 200 <= answer.status < 300:
            return self.check_success(answer.operation, answer.body)
        return self.check_error(
            answer.operation, answer.status, answer.headers, answer.body,
            server_error_ok=server_error_ok,
        )

    def check_success(self, operation: str, body: bytes | str | Any) -> list[Problem]:
        """Problems of a 2xx body (bytes or text as received, or JSON already parsed)."""
        op = self.model.operation_model(operation)
        if isinstance(body, (bytes, str)):
            if not body.strip():
                data: Any = {}
            else:
                try:
                    data = json.loads(body)
                except ValueError as e:
                    return [Problem(operation, "", f"body is not JSON ({e}): {_clip(body)}")]
        else:
            data = body
        shape = op.output_shape
        problems: list[Problem] = []
        if shape is None:
            if data not in ({}, None):
                problems.append(Problem(operation, "", f"the model has no output, got {_clip(data)}"))
            return problems
        self._check(operation, shape, data, "", problems, body_only=True)
        return problems

    def allowed_errors(self, operation: str) -> set[str]:
        op = self.model.operation_model(operation)
        return {e.name for e in op.error_shapes} | set(AUTH_ERRORS) | SERVICE_WIDE_ERRORS

    def check_error(
        self,
        operation: str,
        status: int,
        headers: dict[str, str],
        body: bytes | str,
        *,
        server_error_ok: bool = False,
    ) -> list[Problem]:
        """Problems of an error answer."""
        p: list[Problem] = []

        def bad(what: str, path: str = "") -> None:
            p.append(Problem(operation, path, what))

        if status >= 500 and not server_error_ok:
            bad(f"status {status}: a server error (SDKs retry 5xx; a client's mistake is 4xx)")
        elif status < 400:
            bad(f"status {status} is neither success nor error")
        lower = {k.lower(): v for k, v in headers.items()}
        header_code = lower.get("x-amzn-errortype")
        if not header_code:
            bad("no x-amzn-ErrorType header")
        if isinstance(body, str):
            body = body.encode()
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            data = None
            bad(f"error body is not JSON: {_clip(body)}")
        if data is not None and not isinstance(data, dict):
            bad(f"error body is not a JSON object: {_clip(data)}")
            data = None
        body_code = None
        if data is not None:
            if "__type" not in data:
                bad("error body has no __type")
            elif not isinstance(data["__type"], str):
                bad(f"__type is {_kind(data['__type'])}, not a string")
            else:
                body_code = error_code(data["__type"])
            msg_key = "message" if "message" in data else "Message" if "Message" in data else None
            if msg_key is None:
                bad("error body has no message (or Message)")
            elif not isinstance(data[msg_key], str):
                bad(f"{msg_key} is {_kind(data[msg_key])}, not a string", msg_key)
            elif not data[msg_key].strip():
                bad(f"{msg_key} is empty", msg_key)
        elif body.strip() == b"":
            bad("error answer has an empty body")
        code = error_code(header_code) if header_code else body_code
        if header_code and body_code and error_code(header_code) != body_code:
            bad(f"x-amzn-ErrorType {header_code!r} and __type {data['__type']!r} disagree")
        if code:
            if code not in self.allowed_errors(operation):
                declared = sorted(e.name for e in self.model.operation_model(operation).error_shapes)
                bad(f"error code {code} is not one {operation} may answer (declared: {', '.join(declared)})")
            want = self.error_statuses(code)
            if want and status not in want and not (server_error_ok and status >= 500):
                bad(f"{code} has status {status}, the model says {sorted(want)[0] if len(want) == 1 else sorted(want)}")
        return p

    def error_statuses(self, code: str) -> set[int]:
        """The statuses an error code goes with (the model's, else the auth errors' table)."""
        for shape in self.model.error_shapes:
            if shape.name == code:
                status = shape.metadata.get("error", {}).get("httpStatusCode")
                if status:
                    return {status}
        return AUTH_ERRORS.get(code, set())

    # -- shapes -----------------------------------------------------------------------------

    def _check(self, op: str, shape, value: Any, path: str, p: list[Problem], body_only=False) -> None:
        def bad(what: str) -> None:
            p.append(Problem(op, path, what))

        if value is None:
            bad(f"null ({shape.type_name} {shape.name}): omit the member instead")
            return
        t = shape.type_name
        m = shape.metadata
        if t == "structure":
            if not isinstance(value, dict):
                bad(f"expected a structure ({shape.name}), got {_kind(value)}")
                return
            if m.get("document"):
                return
            names = {}
            for name, member in shape.members.items():
                loc = member.serialization.get("location")
                if body_only and loc in ("header", "headers", "statusCode"):
                    continue
                names[member.serialization.get("name", name) if not loc else name] = (name, member)
            for key in value:
                if key not in names:
                    known = ", ".join(sorted(names)) or "none"
                    p.append(Problem(op, _join(path, key), f"not a member of {shape.name} (members: {known})"))
            for req in shape.required_members:
                wire = shape.members[req].serialization.get("name", req)
                if wire not in value:
                    p.append(Problem(op, _join(path, wire), f"required member of {shape.name} missing"))
            if m.get("union") and len(value) != 1:
                bad(f"a union ({shape.name}) has exactly one member set, got {len(value)}")
            for key, (name, member) in names.items():
                if key in value:
                    self._check(op, member, value[key], _join(path, key), p)
        elif t == "list":
            if not isinstance(value, list):
                bad(f"expected a list ({shape.name}), got {_kind(value)}")
                return
            if value:  # empty lists pass (AWS answers `[]` for lists whose shape has min 1)
                self._length(shape, len(value), "items", bad)
            for i, item in enumerate(value):
                self._check(op, shape.member, item, f"{path}[{i}]", p)
        elif t == "map":
            if not isinstance(value, dict):
                bad(f"expected a map ({shape.name}), got {_kind(value)}")
                return
            if value:  # and `{}` for maps with min 1 (ListTagsForResource of an untagged ARN)
                self._length(shape, len(value), "entries", bad)
            for k, v in value.items():
                self._check(op, shape.key, k, f"{path}{{{k}}}", p)
                self._check(op, shape.value, v, f"{path}[{json.dumps(k)}]", p)
        elif t == "string":
            if not isinstance(value, str):
                bad(f"expected a string ({shape.name}), got {_kind(value)} {_clip(value)}")
                return
            if shape.enum and value not in shape.enum:
                bad(f"{value!r} is not in the enum {shape.name} ({', '.join(shape.enum)})")
            self._length(shape, len(value), "characters", bad)
            rx = self.pattern(shape)
            if rx is not None and not rx.search(value):
                bad(f"{value!r} does not match the pattern of {shape.name}: {m['pattern']}")
        elif t in ("integer", "long", "short", "byte"):
            if isinstance(value, bool) or not isinstance(value, int):
                bad(f"expected an integer ({shape.name}), got {_kind(value)} {_clip(value)}")
                return
            self._range(shape, value, bad)
        elif t in ("float", "double"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(f"expected a number ({shape.name}), got {_kind(value)} {_clip(value)}")
                return
            self._range(shape, value, bad)
        elif t == "boolean":
            if not isinstance(value, bool):
                bad(f"expected a boolean ({shape.name}), got {_kind(value)} {_clip(value)}")
        elif t == "timestamp":
            fmt = shape.serialization.get("timestampFormat") or m.get("timestampFormat")
            if fmt in ("iso8601", "rfc822"):
                if not isinstance(value, str):
                    bad(f"expected a {fmt} timestamp string ({shape.name}), got {_kind(value)}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                # rest-json bodies carry timestamps as epoch seconds unless the model says else.
                bad(f"expected a timestamp in epoch seconds ({shape.name}), got {_kind(value)} {_clip(value)}")
        elif t == "blob":
            if not isinstance(value, str):
                bad(f"expected base64 text ({shape.name}), got {_kind(value)}")
            else:
                try:
                    base64.b64decode(value, validate=True)
                except ValueError:
                    bad(f"not base64 ({shape.name})")
        # Other types (documents) carry any JSON.

    @staticmethod
    def _length(shape, n: int, unit: str, bad) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and n < lo:
            bad(f"{n} {unit}, {shape.name} has at least {lo}")
        if hi is not None and n > hi:
            bad(f"{n} {unit}, {shape.name} has at most {hi}")

    @staticmethod
    def _range(shape, v, bad) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and v < lo:
            bad(f"{v} is below the minimum {lo} of {shape.name}")
        if hi is not None and v > hi:
            bad(f"{v} is above the maximum {hi} of {shape.name}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(v: Any) -> str:
    return {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "an integer", float: "a number", type(None): "null",
    }.get(type(v), type(v).__name__)


def _clip(v: Any, n: int = 200) -> str:
    s = v.decode("utf-8", "replace") if isinstance(v, bytes) else v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= n else s[:n] + "..."


@dataclass
class Recorder:
    """Every answer the attached clients received, and the problems found in them."""

    checker: ModelChecker
    answers: list[Answer] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def attach(self, client) -> Any:
        """Checks every answer ``client`` receives from now on. Returns the client."""
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"after-call.{service}", self._after_call)
        return client

    def _after_call(self, http_response=None, model=None, **_):
        if http_response is None or model is None:
            return
        self.record(
            Answer(model.name, http_response.status_code, dict(http_response.headers),
                   http_response.content or b"")
        )

    def record(self, answer: Answer, *, server_error_ok: bool = False) -> list[Problem]:
        """Checks one answer (also for answers received without boto3) and keeps it."""
        self.answers.append(answer)
        found = self.checker.check(answer, server_error_ok=server_error_ok)
        self.problems.extend(found)
        return found

    def take(self) -> list[Problem]:
        """The problems found since the last call, forgetting them."""
        found, self.problems = self.problems, []
        return found
