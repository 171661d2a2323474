"""The server's own life: SIGTERM cancels and records the builds it runs; a server killed mid-
build leaves it to the next worker, which runs it again as the job's second attempt."""

import json
import signal
import subprocess
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from conftest import _first_line
from helpers import REGION, create_component, create_container_recipe, create_distribution, \
    create_infrastructure, document, unique


def _start(kiln):
    proc = subprocess.Popen([str(kiln.bin), "serve", "--listen", "127.0.0.1:0"], env=kiln.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    line = _first_line(proc, 60)
    assert line and line.startswith("listening on http://"), line
    return proc, line.split()[-1]


def _client(url, account):
    return boto3.session.Session().client(
        "imagebuilder", endpoint_url=url, region_name=REGION,
        aws_access_key_id=account.access_key_id, aws_secret_access_key=account.secret_access_key,
        config=Config(retries={"max_attempts": 1}))


def _slow_build(client):
    """Starts a build whose component runs for two minutes; returns its ARN once it is BUILDING
    that component."""
    comp = create_component(client, data=document(unique("slow"), build="echo started; sleep 120"))
    recipe = create_container_recipe(client, [comp])
    image = client.create_image(containerRecipeArn=recipe,
                                infrastructureConfigurationArn=create_infrastructure(client),
                                distributionConfigurationArn=create_distribution(client))["imageBuildVersionArn"]
    deadline = time.monotonic() + 600
    while client.get_image(imageBuildVersionArn=image)["image"]["state"]["status"] != "BUILDING":
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(1)
    time.sleep(3)  # into the component's sleep
    return image


@pytest.mark.build
def test_sigterm_cancels_and_records_running_builds(kiln, account_a):
    proc, url = _start(kiln)
    try:
        image = _slow_build(_client(url, account_a))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 30, "the build was waited for, not cancelled"
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = _start(kiln)
    try:
        state = _client(url, account_a).get_image(imageBuildVersionArn=image)["image"]["state"]
        assert state["status"] == "CANCELLED", state
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _attempts(kiln, image):
    """Which worker ran each attempt of a queued build, as `kiln image get -o json` shows it."""
    out = subprocess.run([str(kiln.bin), "image", "get", image, "-o", "json"], env=kiln.env(),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out).get("attempts", [])


@pytest.mark.build
def test_a_killed_servers_build_is_run_again_by_the_next_worker(kiln, account_a):
    proc, url = _start(kiln)
    image = _slow_build(_client(url, account_a))
    proc.kill()
    proc.wait()
    time.sleep(2)  # its sandbox dies with it
    proc, url = _start(kiln)
    client = _client(url, account_a)
    try:
        # The new server's reaper sees the build's run folder released (its worker died) and
        # gives the job back to the queue at once, well before its 60 s lease would lapse.
        deadline = time.monotonic() + 30
        attempts = _attempts(kiln, image)
        while not (len(attempts) == 2 and attempts[1]["end"] == "running"):
            assert time.monotonic() < deadline, f"the build was not run again: {attempts}"
            time.sleep(1)
            attempts = _attempts(kiln, image)
        assert attempts[0]["end"] == "lost", attempts
        assert attempts[0]["worker"] != attempts[1]["worker"], attempts
        client.cancel_image_creation(imageBuildVersionArn=image, clientToken=str(uuid.uuid4()))
        deadline = time.monotonic() + 60
        while (state := client.get_image(imageBuildVersionArn=image)["image"]["state"])["status"] != "CANCELLED":
            assert time.monotonic() < deadline, state
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
