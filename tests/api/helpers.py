"""What the scenario tests share: request bodies, error expectations, polling an image."""

from __future__ import annotations

import sys
import time
import uuid
from contextlib import contextmanager

import pytest
from botocore.exceptions import ClientError

REGION = "local"


def unique(prefix: str) -> str:
    """A name no other run uses, valid as an Image Builder resource name (3 to 128 characters;
    lower case, so the ARN carries it unchanged)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

PARENT = "bootstrap:debian/bookworm"
TERMINAL = {"AVAILABLE", "FAILED", "CANCELLED"}
# The order of the states a build goes through (PENDING -> BUILDING -> TESTING ->
# DISTRIBUTING -> AVAILABLE); a build may skip some between polls, never go back.
ORDER = ["PENDING", "CREATING", "BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING", "AVAILABLE"]


def document(name: str = "hello", *, build: str = "echo hello", test: str | None = None) -> str:
    """An AWSTOE document with one ExecuteBash step in build (and one in test)."""
    doc = (
        f"name: {name}\n"
        "schemaVersion: 1.0\n"
        "phases:\n"
        "  - name: build\n"
        "    steps:\n"
        "      - name: Build\n"
        "        action: ExecuteBash\n"
        "        inputs:\n"
        "          commands:\n"
        f"            - {build}\n"
    )
    if test is not None:
        doc += (
            "  - name: test\n"
            "    steps:\n"
            "      - name: Test\n"
            "        action: ExecuteBash\n"
            "        inputs:\n"
            "          commands:\n"
            f"            - {test}\n"
        )
    return doc


def arn(account, kind: str, *parts: str) -> str:
    return f"arn:kiln:imagebuilder:{REGION}:{account.account_id}:{kind}/" + "/".join(parts)


def token() -> str:
    return str(uuid.uuid4())


def create_component(client, name: str | None = None, version: str = "1.0.0", data: str | None = None,
                     **extra) -> str:
    name = name or unique("comp")
    r = client.create_component(name=name, semanticVersion=version, platform="Linux",
                                data=data or document(name), **extra)
    return r["componentBuildVersionArn"]


def create_container_recipe(client, components: list[str], name: str | None = None, version: str = "1.0.0",
                            repository: str | None = None, **extra) -> str:
    name = name or unique("ctr")
    r = client.create_container_recipe(
        containerType="DOCKER", name=name, semanticVersion=version, parentImage=PARENT,
        components=[{"componentArn": c} for c in components],
        targetRepository={"service": "ECR", "repositoryName": repository or name}, **extra)
    return r["containerRecipeArn"]


def create_infrastructure(client, name: str | None = None, **extra) -> str:
    r = client.create_infrastructure_configuration(name=name or unique("infra"),
                                                   instanceProfileName="kiln-builder", **extra)
    return r["infrastructureConfigurationArn"]


def create_distribution(client, name: str | None = None, repository: str | None = None, **extra) -> str:
    dist = {"region": REGION}
    if repository:
        dist["containerDistributionConfiguration"] = {
            "targetRepository": {"service": "ECR", "repositoryName": repository}}
    r = client.create_distribution_configuration(name=name or unique("dist"), distributions=[dist], **extra)
    return r["distributionConfigurationArn"]


@contextmanager
def raises(code: str, status: int | None = None, *, mentions: str | tuple[str, ...] = ()):
    """Expects the block to fail with the Image Builder error `code` (and HTTP `status`), whose
    message mentions each of `mentions` (case-insensitively). Yields a dict filled with the
    error's code, message and status."""
    seen: dict = {}
    with pytest.raises(ClientError) as info:
        yield seen
    err = info.value.response.get("Error", {})
    meta = info.value.response.get("ResponseMetadata", {})
    seen.update(code=err.get("Code"), message=err.get("Message") or "", status=meta.get("HTTPStatusCode"))
    assert seen["code"] == code, f"expected {code}, got {seen['code']}: {seen['message']}"
    if status is not None:
        assert seen["status"] == status, f"{code}: expected HTTP {status}, got {seen['status']}"
    for word in (mentions,) if isinstance(mentions, str) else mentions:
        assert word.lower() in seen["message"].lower(), f"{code}: message {seen['message']!r} does not name {word!r}"


def paginate(call, key: str, **kw) -> tuple[list, list[str]]:
    """Every item of a List operation by hand, following nextToken; also the tokens seen."""
    items, tokens = [], []
    nxt = None
    for _ in range(1000):
        r = call(**kw, **({"nextToken": nxt} if nxt else {}))
        items += r.get(key, [])
        nxt = r.get("nextToken")
        if not nxt:
            return items, tokens
        assert nxt not in tokens, f"nextToken {nxt!r} came back: paging does not advance"
        tokens.append(nxt)
    pytest.fail("more than 1000 pages")


def wait_for_image(client, image_arn: str, *, timeout: float = 600, interval: float = 2) -> tuple[dict, list[str]]:
    """Polls GetImage until the image is AVAILABLE, FAILED or CANCELLED; prints each change of
    state. Returns the last image and the states seen, in order, without repeats."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        image = client.get_image(imageBuildVersionArn=image_arn)["image"]
        status = image.get("state", {}).get("status")
        if not seen or seen[-1] != status:
            seen.append(status)
            print(f"  {time.monotonic() - start:6.1f}s {image_arn}: {status}"
                  + (f" ({image['state'].get('reason')})" if image.get("state", {}).get("reason") else ""),
                  file=sys.stderr, flush=True)
        if status in TERMINAL:
            return image, seen
        if time.monotonic() > deadline:
            pytest.fail(f"{image_arn} still {status} after {timeout:.0f} s (states: {seen})")
        time.sleep(interval)


def assert_forward(states: list[str]) -> None:
    """States of a build only move forward (FAILED/CANCELLED may end it from anywhere)."""
    known = [s for s in states if s in ORDER]
    idx = [ORDER.index(s) for s in known]
    assert idx == sorted(idx), f"states went backwards: {states}"
    assert states, states
