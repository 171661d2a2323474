"""The factory running itself, end to end: a pipeline scheduled every minute, created through
the API, builds by itself; its AVAILABLE message reaches a webhook that was down meanwhile,
signed, after `kiln serve` was killed and started again; nothing is lost and nothing arrives
twice.

It has a kiln home of its own, so that no other server (the suite's) runs its schedule or
delivers its messages: the only server is the one this test kills."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from conftest import _first_line
from helpers import (REGION, create_component, create_container_recipe, create_distribution,
                     create_infrastructure, document, unique, wait_for_image)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Own:
    """A kiln home, its account and the server running over it."""

    def __init__(self, kiln, home):
        self.bin = kiln.bin
        self.env = {**os.environ, "KILN_HOME": str(home), "KILN_PLAIN": "1"}
        self.log = home.parent / "serve.log"
        out = subprocess.run([str(self.bin), "account", "create", "tell", "-o", "json"], env=self.env,
                             check=True, capture_output=True, text=True).stdout
        self.account = json.loads(out)
        # Its account is the operator's: its components are trusted, so its container builds
        # run in sandboxes (the default would refuse them: untrusted components run in VMs).
        (home / "config.yaml").write_text(f"trust:\n  operatorAccounts: [\"{self.account['accountId']}\"]\n")
        self.proc = None
        self.url = None

    def start(self):
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([str(self.bin), "serve", "--listen", "127.0.0.1:0"], env=self.env,
                                         stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        line = _first_line(self.proc, 60)
        assert line and line.startswith("listening on http://"), f"{line!r}: {self.tail()}"
        self.url = line.split()[-1]
        return self

    def tail(self, n=40):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self):
        return boto3.session.Session().client(
            "imagebuilder", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=self.account["accessKeyId"],
            aws_secret_access_key=self.account["secretAccessKey"],
            config=Config(retries={"max_attempts": 1}, read_timeout=120))

    def kiln(self, method, name, members=None):
        """One of kiln's own signed operations (`/kiln/NAME`)."""
        members = members or {}
        url = f"{self.url}/kiln/{name}"
        body = b""
        if method in ("GET", "DELETE"):
            url += "?" + urllib.parse.urlencode(members)
        else:
            body = json.dumps(members).encode()
        req = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(self.account["accessKeyId"], self.account["secretAccessKey"]),
                  "imagebuilder", REGION).add_auth(req)
        p = req.prepare()
        r = urllib.request.Request(p.url, data=body or None, method=method, headers=dict(p.headers.items()))
        with urllib.request.urlopen(r, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)



@pytest.mark.build
def test_a_scheduled_image_reaches_a_webhook_that_was_down_across_a_restart(kiln, tmp_path, webhook_receiver):
    rx = webhook_receiver
    rx.down()  # down from the start: the first attempts find the port closed
    home = tmp_path / "home"
    own = Own(kiln, home).start()
    try:
        client = own.client()
        topic = own.kiln("PUT", "CreateTopic", {"name": unique("tell"), "webhookUrl": rx.url,
                                                "secrets": [SECRET]})["topicArn"]
        comp = create_component(client, data=document(unique("s"), build="echo scheduled > /etc/kiln-scheduled"))
        recipe = create_container_recipe(client, [comp])
        infra = create_infrastructure(client, snsTopicArn=topic)
        dist = create_distribution(client)
        created = time.monotonic()
        pipe = client.create_image_pipeline(
            name=unique("every-minute"), containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
            distributionConfigurationArn=dist, imageTestsConfiguration={"imageTestsEnabled": False},
            schedule={"scheduleExpression": "cron(* * * * ? *)",
                      "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"})["imagePipelineArn"]
        while True:
            scheduled = [i for i in client.list_image_pipeline_images(imagePipelineArn=pipe)["imageSummaryList"]
                         if i.get("buildType") == "SCHEDULED"]
            if scheduled:
                break
            assert time.monotonic() - created < 120, f"no SCHEDULED image within two minutes:\n{own.tail()}"
            time.sleep(2)
        print(f"  SCHEDULED image after {time.monotonic() - created:.0f} s", file=sys.stderr)
        got = client.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
        client.update_image_pipeline(
            imagePipelineArn=pipe, status="DISABLED",
            **{k: got[k] for k in ("containerRecipeArn", "infrastructureConfigurationArn",
                                   "distributionConfigurationArn", "schedule", "imageTestsConfiguration")})
        image_arn = scheduled[-1]["arn"]
        image, states = wait_for_image(client, image_arn, timeout=900)
        assert states[-1] == "AVAILABLE", image["state"]
        assert image["buildType"] == "SCHEDULED"

        # The receiver is down: the message waits in the outbox, tried and failed.
        deadline = time.monotonic() + 60
        while True:
            [m] = [m for m in own.kiln("GET", "ListTopicMessages", {"topicArn": topic})["messages"]
                   if m["event"] == "image.available"]
            if m["attempts"] >= 1:
                break
            assert time.monotonic() < deadline, m
            time.sleep(1)
        assert m["state"] == "PENDING", m
        assert not rx.deliveries

        # Killed without a word, the receiver back meanwhile, started again.
        own.stop(signal.SIGKILL)
        rx.up()
        own.start()
        d = rx.wait_for(lambda d: d.type == "image.available", timeout=240)
        assert d.verify(SECRET), f"the signature does not verify: {d.headers}"
        assert d.payload["data"]["arn"] == image_arn
        assert d.payload["data"]["buildType"] == "SCHEDULED"
        time.sleep(8)  # anything sent twice would come now
        assert len(rx.accepted()) == 1, [x.headers for x in rx.accepted()]
        assert rx.by_id()[d.id] == 1
        [m] = [m for m in own.kiln("GET", "ListTopicMessages", {"topicArn": topic})["messages"]
               if m["event"] == "image.available"]
        assert (m["messageId"], m["state"]) == (d.id, "DELIVERED"), m
        assert m["attempts"] >= 2, m
    finally:
        own.stop()
