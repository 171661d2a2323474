"""Topics (kiln's own /kiln/ paths) and notifications: an infrastructure configuration's
snsTopicArn names a topic, and an image built with it is delivered to the topic's webhook,
signed as Standard Webhooks sign (docs/notifications.md)."""

import pytest

from helpers import (REGION, create_component, create_container_recipe, create_distribution,
                     create_infrastructure, document, raises, unique, wait_for_image)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _topic(kiln_call, url, account=None, **extra):
    name = unique("topic")
    r = kiln_call("CreateTopic", {"name": name, "webhookUrl": url, **extra}, account=account)
    assert r.status == 200, r.json
    return r.json


def test_topics_are_made_read_rotated_and_deleted_through_kiln_paths(kiln_call, account_b):
    made = _topic(kiln_call, "http://127.0.0.1:9/hook")
    arn = made["topicArn"]
    assert arn.startswith("arn:kiln:imagebuilder:") and ":topic/" in arn, arn
    [secret] = made["secrets"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert made["topic"]["state"] == "ACTIVE"

    got = kiln_call("GetTopic", {"topicArn": arn})
    assert got.status == 200, got.json
    assert got.json["topic"]["webhookUrl"] == "http://127.0.0.1:9/hook"
    assert secret[6:] not in got.body.decode(), "a secret is answered once, at its making"
    assert got.json["topic"]["secrets"] == ["whsec_…" + secret[-4:]]

    listed = kiln_call("ListTopics").json["topics"]
    assert arn in [t["arn"] for t in listed]
    assert all(secret[6:] not in str(t) for t in listed)

    rotated = kiln_call("RotateTopicSecret", {"topicArn": arn})
    assert rotated.status == 200, rotated.json
    [new] = rotated.json["secrets"]
    assert new != secret
    assert len(rotated.json["topic"]["secrets"]) == 2, "the old secret signs until removed"
    only = kiln_call("RotateTopicSecret", {"topicArn": arn, "secret": SECRET, "removeOld": True})
    assert only.json["topic"]["secrets"] == ["whsec_…" + SECRET[-4:]]

    assert kiln_call("ListTopicMessages", {"topicArn": arn}).json["messages"] == []
    # Another account sees nothing of it.
    theirs = kiln_call("GetTopic", {"topicArn": arn}, account=account_b)
    assert (theirs.status, theirs.json["__type"]) == (404, "ResourceNotFoundException")

    gone = kiln_call("DeleteTopic", {"topicArn": arn})
    assert gone.status == 200, gone.json
    again = kiln_call("GetTopic", {"topicArn": arn})
    assert (again.status, again.json["__type"]) == (404, "ResourceNotFoundException")


def test_bad_topic_requests_are_client_errors(kiln_call, raw):
    bad_url = kiln_call("CreateTopic", {"name": unique("t"), "webhookUrl": "ftp://example.com/x"})
    assert (bad_url.status, bad_url.json["__type"]) == (400, "InvalidParameterValueException")
    assert "webhookUrl" in bad_url.json["message"]
    bad_secret = kiln_call("CreateTopic", {"name": unique("t"), "webhookUrl": "http://127.0.0.1:9/",
                                           "secrets": ["not-a-secret"]})
    assert (bad_secret.status, bad_secret.json["__type"]) == (400, "InvalidParameterValueException")
    missing = kiln_call("CreateTopic", {"webhookUrl": "http://127.0.0.1:9/"})
    assert (missing.status, missing.json["__type"]) == (400, "InvalidRequestException")
    name = unique("t")
    assert kiln_call("CreateTopic", {"name": name, "webhookUrl": "http://127.0.0.1:9/"}).status == 200
    twice = kiln_call("CreateTopic", {"name": name, "webhookUrl": "http://127.0.0.1:9/"})
    assert (twice.status, twice.json["__type"]) == (400, "ResourceAlreadyExistsException")
    unsigned = raw(None, "POST", "/kiln/ListTopics", {}, sign=False)
    assert unsigned.status == 403


def test_sns_topic_arn_names_a_topic_of_the_account(client_a, account_a, kiln_call):
    with raises("ResourceNotFoundException", 404, mentions=("snsTopicArn", "topic")):
        create_infrastructure(client_a, snsTopicArn=f"arn:aws:sns:{REGION}:{account_a.account_id}:{unique('none')}")
    made = _topic(kiln_call, "http://127.0.0.1:9/hook")
    name = made["topic"]["name"]
    # The SNS shape users already write names the kiln topic of that name.
    sns = f"arn:aws:sns:{REGION}:{account_a.account_id}:{name}"
    infra = create_infrastructure(client_a, snsTopicArn=sns)
    got = client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)
    assert got["infrastructureConfiguration"]["snsTopicArn"] == sns, "kept as written"
    in_use = kiln_call("DeleteTopic", {"topicArn": made["topicArn"]})
    assert (in_use.status, in_use.json["__type"]) == (400, "ResourceDependencyException")
    assert infra in in_use.json["message"]
    client_a.delete_infrastructure_configuration(infrastructureConfigurationArn=infra)
    assert kiln_call("DeleteTopic", {"topicArn": made["topicArn"]}).status == 200


@pytest.mark.build
def test_an_available_image_reaches_the_webhook_signed_after_a_failed_attempt(
        client_a, account_a, kiln_call, webhook_receiver):
    rx = webhook_receiver
    rx.answer(500)  # the first attempt fails: the message is tried again (5 s later)
    made = _topic(kiln_call, rx.url, secrets=[SECRET])
    word = unique("n")
    comp = create_component(client_a, data=document("n", build=f"echo {word} > /etc/kiln-notify-test"))
    name = unique("notify")
    recipe = create_container_recipe(client_a, [comp], name=name)
    infra = create_infrastructure(client_a, snsTopicArn=made["topicArn"])
    dist = create_distribution(client_a, repository=name)
    pipe = client_a.create_image_pipeline(
        name=name, containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        distributionConfigurationArn=dist,
        imageTestsConfiguration={"imageTestsEnabled": False})["imagePipelineArn"]
    image_arn = client_a.start_image_pipeline_execution(imagePipelineArn=pipe)["imageBuildVersionArn"]
    image, states = wait_for_image(client_a, image_arn, timeout=900)
    assert states[-1] == "AVAILABLE", image["state"]

    d = rx.wait_for(lambda d: d.type == "image.available", timeout=90)
    assert d.verify(SECRET), f"the signature does not verify: {d.headers}"
    payload = d.payload
    assert payload["data"]["arn"] == image_arn
    assert payload["data"]["state"]["status"] == "AVAILABLE"
    assert payload["data"]["infrastructureConfiguration"]["arn"] == infra
    assert payload["data"]["outputResources"]["containers"], payload["data"]
    assert payload["timestamp"].endswith("Z")
    assert d.headers["webhook-id"].startswith("msg_")
    assert rx.by_id()[d.id] == 2, "one refused attempt, one delivered, under one webhook-id"
    assert len(rx.accepted()) == 1, "delivered once"

    messages = kiln_call("ListTopicMessages", {"topicArn": made["topicArn"]}).json["messages"]
    [m] = messages
    assert (m["messageId"], m["event"], m["state"], m["attempts"]) == (d.id, "image.available", "DELIVERED", 2)
    assert "500" in m["lastError"]
    client_a.delete_image_pipeline(imagePipelineArn=pipe)
