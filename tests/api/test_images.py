"""Images: container pipelines started through the API and built for real (marked `build`),
CreateImage, GetImage, ListImages, ListImageBuildVersions, CancelImageCreation, DeleteImage."""

import subprocess
import time

import pytest

from helpers import (REGION, arn, assert_forward, create_component, create_container_recipe,
                     create_distribution, create_infrastructure, document, raises, unique,
                     wait_for_image)

MARK = "/etc/kiln-api-test"


def _pipeline(client, components, *, tests=True, **extra):
    name = unique("pipe")
    recipe = create_container_recipe(client, components, name=name)
    infra = create_infrastructure(client)
    dist = create_distribution(client, repository=name)
    pipe = client.create_image_pipeline(
        name=name, containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        distributionConfigurationArn=dist,
        imageTestsConfiguration={"imageTestsEnabled": tests, "timeoutMinutes": 60},
        **extra)["imagePipelineArn"]
    return name, recipe, infra, dist, pipe


@pytest.mark.build
def _region_tags(kiln, account, name):
    """The tags in the account's region folder of an image (kiln keeps an API account's images
    in $KILN_HOME/regions/ACCOUNT/REGION/NAME)."""
    import json as _json

    index = kiln.home / "regions" / account.account_id / REGION / name.lower() / "index.json"
    if not index.exists():
        return []
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            for m in _json.loads(index.read_text()).get("manifests", [])]


def test_container_pipeline_started_through_the_api(client_a, account_a, aws, kiln, registry):
    # A document of this run only, so that no step cache of an earlier run makes the build instant.
    word = unique("built")
    comp = create_component(client_a, data=document(
        "mark", build=f"echo {word} > {MARK}", test=f"grep -q {word} {MARK}"))
    # The suite's server names no scanner: the image says it was not scanned, and why.
    name, recipe, infra, dist, pipe = _pipeline(
        client_a, [comp], imageScanningConfiguration={"imageScanningEnabled": True})
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert got["imageScanningConfiguration"] == {"imageScanningEnabled": True}, got

    started = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)
    image_arn = started["imageBuildVersionArn"]
    assert image_arn == arn(account_a, "image", name, "1.0.0", "1")

    image, states = wait_for_image(client_a, image_arn, timeout=600)
    assert states[-1] == "AVAILABLE", f"states {states}, reason {image['state'].get('reason')}"
    assert_forward(states)
    assert states[0] in ("PENDING", "BUILDING"), states
    assert image["arn"] == image_arn
    assert image["name"] == name
    assert image["version"] == "1.0.0/1"
    assert image.get("type", "DOCKER") == "DOCKER"
    assert image.get("sourcePipelineArn", pipe) == pipe
    assert image["imageScanningConfiguration"] == {"imageScanningEnabled": True}
    assert image["scanState"]["status"] == "ABANDONED", image["scanState"]
    assert "config.yaml" in image["scanState"]["reason"], image["scanState"]
    assert image["containerRecipe"]["arn"] == recipe
    assert "failureContext" not in image["state"]
    containers = image["outputResources"]["containers"]
    assert containers, image["outputResources"]
    assert [c["region"] for c in containers] == [REGION]
    assert all(c["imageUris"] for c in containers), containers
    assert any(name in uri for c in containers for uri in c["imageUris"]), containers
    assert {"1.0.0", "1.0.0-1"} <= set(_region_tags(kiln, account_a, name)), "not in its region"

    # The image in every list that should show it.
    in_pipeline = client_a.list_image_pipeline_images(imagePipelineArn=pipe)["imageSummaryList"]
    assert [i["arn"] for i in in_pipeline] == [image_arn]
    assert in_pipeline[0]["state"]["status"] == "AVAILABLE"
    versions = client_a.list_images(filters=[{"name": "name", "values": [name]}])["imageVersionList"]
    version_arn = arn(account_a, "image", name, "1.0.0")
    assert [v["arn"] for v in versions] == [version_arn]
    builds = client_a.list_image_build_versions(imageVersionArn=version_arn)["imageSummaryList"]
    assert [b["arn"] for b in builds] == [image_arn]
    pipeline = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert pipeline.get("lastRunStatus", "AVAILABLE") == "AVAILABLE"

    got = aws("imagebuilder", "get-image", "--image-build-version-arn", image_arn).json
    assert got["image"]["state"]["status"] == "AVAILABLE"

    # DistributeImage: the AVAILABLE image to a registry region, nothing rebuilt.
    far = client_a.create_distribution_configuration(
        name=unique("far"), distributions=[{"region": registry.region}])["distributionConfigurationArn"]
    with raises("InvalidRequestException", 400, mentions="not a registry or bucket"):
        client_a.distribute_image(sourceImage=image_arn, distributionConfigurationArn=dist,
                                  executionRole="kiln", clientToken=unique("t"))
    answer = client_a.distribute_image(sourceImage=image_arn, distributionConfigurationArn=far,
                                       executionRole="kiln", clientToken=unique("t"))
    assert answer["imageBuildVersionArn"] == image_arn
    deadline = time.monotonic() + 120
    while True:
        outputs = client_a.get_image(imageBuildVersionArn=image_arn)["image"]["outputResources"]
        uris = [u for c in outputs.get("containers", []) if c["region"] == registry.region
                for u in c["imageUris"]]
        if uris or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert f"docker://{registry.host}/api/{name}:1.0.0" in uris, outputs
    inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                              f"docker://{registry.host}/api/{name}:1.0.0"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    with raises("InvalidRequestException", 400, mentions="already"):
        client_a.distribute_image(sourceImage=image_arn, distributionConfigurationArn=far,
                                  executionRole="kiln", clientToken=unique("t"))

    # A second run of the pipeline is build 2 of the same version.
    again = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)["imageBuildVersionArn"]
    assert again == arn(account_a, "image", name, "1.0.0", "2")
    image2, states2 = wait_for_image(client_a, again, timeout=600)
    assert states2[-1] == "AVAILABLE", states2

    # Deleting a build: gone from GetImage and from the lists.
    assert client_a.delete_image(imageBuildVersionArn=again)["imageBuildVersionArn"] == again
    with raises("ResourceNotFoundException", 404):
        client_a.get_image(imageBuildVersionArn=again)
    builds = client_a.list_image_build_versions(imageVersionArn=version_arn)["imageSummaryList"]
    assert [b["arn"] for b in builds] == [image_arn]


@pytest.mark.build
def test_failing_test_component_fails_the_image(client_a, account_a, kiln):
    good = create_component(client_a, data=document("fine", build="echo fine > /tmp/fine"))
    failing = create_component(client_a, data=document("failing", build=f"echo {unique('run')}", test="exit 1"))
    name, recipe, infra, dist, pipe = _pipeline(client_a, [good, failing])

    image_arn = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)["imageBuildVersionArn"]
    image, states = wait_for_image(client_a, image_arn, timeout=600)
    assert states[-1] == "FAILED", states
    assert "TESTING" in states or "BUILDING" in states or "PENDING" in states, states
    assert "DISTRIBUTING" not in states and "AVAILABLE" not in states, states
    state = image["state"]
    assert state.get("reason"), state
    # The model (botocore 1.44) has state.failureContext.componentFailure.componentArn.
    failure = state.get("failureContext", {})
    assert failure.get("componentFailure", {}).get("componentArn") == failing, state
    assert failure["componentFailure"].get("phaseName", "test") == "test", failure
    # Nothing distributed.
    assert not image.get("outputResources", {}).get("containers"), image.get("outputResources")
    assert _region_tags(kiln, account_a, name) == [], "something reached the region"
    summary = client_a.list_image_pipeline_images(imagePipelineArn=pipe)["imageSummaryList"]
    assert [(i["arn"], i["state"]["status"]) for i in summary] == [(image_arn, "FAILED")]


@pytest.mark.build
def test_create_image_and_cancel_it(client_a, account_a):
    comp = create_component(client_a, data=document("slow", build=f"sleep 120 && echo {unique('run')}"))
    recipe = create_container_recipe(client_a, [comp])
    infra = create_infrastructure(client_a)
    r = client_a.create_image(containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
                              imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})
    image_arn = r["imageBuildVersionArn"]
    assert image_arn.startswith(arn(account_a, "image", ""))
    assert image_arn.endswith("/1.0.0/1")
    c = client_a.cancel_image_creation(imageBuildVersionArn=image_arn)
    assert c["imageBuildVersionArn"] == image_arn
    image, states = wait_for_image(client_a, image_arn, timeout=300)
    assert states[-1] == "CANCELLED", states
    assert not image.get("outputResources", {}).get("containers"), image.get("outputResources")


def test_missing_images(client_a, account_a):
    missing = arn(account_a, "image", unique("no"), "1.0.0", "1")
    with raises("ResourceNotFoundException", 404):
        client_a.get_image(imageBuildVersionArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.delete_image(imageBuildVersionArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.cancel_image_creation(imageBuildVersionArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.distribute_image(sourceImage=missing, executionRole="kiln", clientToken=unique("t"),
                                  distributionConfigurationArn=create_distribution(client_a))
    assert client_a.list_image_build_versions(
        imageVersionArn=arn(account_a, "image", unique("no"), "1.0.0")).get("imageSummaryList", []) == []
    client_a.list_images()


def test_create_image_refuses_bad_references(client_a, account_a):
    comp = create_component(client_a)
    recipe = create_container_recipe(client_a, [comp])
    with raises("ResourceNotFoundException", 404):
        client_a.create_image(containerRecipeArn=recipe,
                              infrastructureConfigurationArn=arn(account_a, "infrastructure-configuration",
                                                                 unique("no")))
    infra = create_infrastructure(client_a)
    with raises("ResourceNotFoundException", 404):
        client_a.create_image(containerRecipeArn=arn(account_a, "container-recipe", unique("no"), "1.0.0"),
                              infrastructureConfigurationArn=infra)


@pytest.mark.build
def test_a_recipe_naming_awss_update_linux_builds(client_a):
    # As a recipe written for AWS names it: another region, a version filter.
    update = "arn:aws:imagebuilder:us-east-1:aws:component/update-linux/x.x.x"
    word = unique("upd")
    comp = create_component(client_a, data=document("after", build=f"echo {word} > {MARK}"))
    name, recipe, infra, dist, pipe = _pipeline(client_a, [update, comp], tests=False)
    image_arn = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)["imageBuildVersionArn"]
    image, states = wait_for_image(client_a, image_arn, timeout=600)
    assert states[-1] == "AVAILABLE", f"states {states}, reason {image['state'].get('reason')}"
    components = image["containerRecipe"]["components"]
    assert components[0]["componentArn"].endswith(":aws:component/update-linux/x.x.x"), components


def _sse(server, account, image_arn, last_id=None, timeout=600):
    """Reads kiln's log stream of an image to its end: [(id, data)] and the end event's data."""
    import urllib.parse
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = server.url.rstrip("/") + "/kiln/logs?" + urllib.parse.urlencode({"imageBuildVersionArn": image_arn})
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    req = AWSRequest(method="GET", url=url, headers=headers)
    SigV4Auth(Credentials(account.access_key_id, account.secret_access_key), "imagebuilder", REGION).add_auth(req)
    p = req.prepare()
    events, end, event = [], None, {}
    with urllib.request.urlopen(urllib.request.Request(p.url, headers=dict(p.headers.items())),
                                timeout=timeout) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        for raw_line in resp:
            line = raw_line.decode().rstrip("\n")
            if line == "":
                if event.get("event") == "end":
                    end = event.get("data")
                    break
                if "id" in event:
                    events.append((int(event["id"]), event.get("data", "")))
                event = {}
            elif not line.startswith(":"):
                k, _, v = line.partition(":")
                event[k] = v[1:] if v.startswith(" ") else v
    return events, end


@pytest.mark.build
def test_the_build_log_streams_live_and_resumes_without_loss(client_a, account_a, server):
    word = unique("log")
    comp = create_component(client_a, data=document(
        "slow", build=f"for i in 1 2 3 4 5; do echo {word}-$i; sleep 1; done"))
    name, recipe, infra, dist, pipe = _pipeline(client_a, [comp], tests=False)
    image_arn = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)["imageBuildVersionArn"]
    # Followed from the start, while it runs: every line once, in order, then the end.
    events, end = _sse(server, account_a, image_arn)
    assert end == "AVAILABLE", (end, events[-5:])
    ids = [i for i, _ in events]
    assert ids == list(range(len(ids))), ids
    text = "\n".join(d for _, d in events)
    for i in range(1, 6):
        assert f"{word}-{i}" in text, text
    # The suite's server lets components no operator account owns run in sandboxes; the log
    # says so.
    assert "builder: sandbox (component " in text and "lets it run in a sandbox" in text, text
    # Resumed after an event id: exactly the lines after it.
    half = len(events) // 2
    rest, end2 = _sse(server, account_a, image_arn, last_id=half)
    assert rest == events[half + 1:], (rest[:3], events[half + 1:half + 4])
    assert end2 == "AVAILABLE"


@pytest.mark.build
def test_an_untrusted_component_builds_in_a_vm_and_the_record_says_why(client_a, account_a, server, kiln):
    """The configuration raises the suite server's `sandbox` to `vm`: an image recipe of the
    account's own component (no operator account's) builds on the VM builder, recorded with
    the reason from the start. Cancelled at once: the choice is made before the parent is."""
    from helpers import PARENT

    comp = create_component(client_a, data=document("vm-only", build=f"echo {unique('vm')}"))
    name = unique("vmimg")
    recipe = client_a.create_image_recipe(
        name=name, semanticVersion="1.0.0", parentImage=PARENT,
        components=[{"componentArn": comp}])["imageRecipeArn"]
    infra = create_infrastructure(client_a, tags={"kiln:untrustedComponents": "vm"})
    image_arn = client_a.create_image(
        imageRecipeArn=recipe, infrastructureConfigurationArn=infra,
        imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})["imageBuildVersionArn"]
    client_a.cancel_image_creation(imageBuildVersionArn=image_arn)
    events, end = _sse(server, account_a, image_arn, timeout=300)
    assert end == "CANCELLED", (end, events[-5:])
    text = "\n".join(d for _, d in events)
    reason = (f"builder: vm (component {comp} is owned by account {account_a.account_id}, "
              "not an operator account; untrustedComponents: vm, the infrastructure's setting)")
    assert reason in text, text
    rec = kiln.json("image", "get", image_arn, "-o", "json")
    assert rec["builder"]["kind"] == "vm" and rec["builder"]["requested"] == "sandbox", rec["builder"]
    assert rec["builder"]["boundarySource"] == "infrastructure", rec["builder"]
    assert rec["builder"]["untrusted"] == [{"component": comp, "account": account_a.account_id}]
