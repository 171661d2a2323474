"""Schedules through the API: checked when stored (the field and the rule named), shown with
their next run, and run by the server itself."""

import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from helpers import (create_component, create_container_recipe, create_distribution,
                     create_infrastructure, raises, unique, wait_for_image)


def _parts(client):
    comp = create_component(client)
    recipe = create_container_recipe(client, [comp])
    return recipe, create_infrastructure(client), create_distribution(client)


def _pipeline(client, schedule, **extra):
    recipe, infra, dist = _parts(client)
    return client.create_image_pipeline(
        name=unique("sched"), containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        distributionConfigurationArn=dist, schedule=schedule, **extra)["imagePipelineArn"]


def test_a_pipeline_shows_its_next_run_in_its_time_zone(client_a):
    pipe = _pipeline(client_a, {"scheduleExpression": "cron(0 3 ? * SUN *)", "timezone": "Europe/Paris"})
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    nxt = got["dateNextRun"]
    at = datetime.fromisoformat(nxt.replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/Paris"))
    assert (at.weekday(), at.hour, at.minute) == (6, 3, 0), f"{nxt} is {at} in Paris"
    assert timedelta(0) < at - datetime.now(ZoneInfo("Europe/Paris")) <= timedelta(days=7), at
    assert got["consecutiveFailures"] == 0
    assert "dateLastRun" not in got and "lastRunStatus" not in got
    assert got["schedule"]["timezone"] == "Europe/Paris"
    listed = [p for p in client_a.list_image_pipelines()["imagePipelineList"] if p["arn"] == pipe]
    assert listed and listed[0]["dateNextRun"] == nxt


def test_a_disabled_pipeline_has_no_next_run(client_a):
    pipe = _pipeline(client_a, {"scheduleExpression": "rate(1 day)"}, status="DISABLED")
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert "dateNextRun" not in got, got


@pytest.mark.parametrize("schedule, mentions", [
    ({"scheduleExpression": "cron(99 0 * * SUN)"}, ("minutes", "0-59")),
    ({"scheduleExpression": "cron(0 0 1 * SUN *)"}, ("day-of-week", "?")),
    ({"scheduleExpression": "cron(0 3 ? * SAT#6 *)"}, ("day-of-week",)),
    ({"scheduleExpression": "rate(0 minutes)"}, ("rate",)),
    ({"scheduleExpression": "daily"}, ("expression",)),
    ({"scheduleExpression": "cron(0 3 ? * SUN *)", "timezone": "Mars/Olympus"}, ("timezone",)),
    ({"scheduleExpression": "rate(1 day)", "autoDisablePolicy": {"failureCount": 11}}, ("failureCount",)),
])
def test_bad_schedules_are_refused_naming_the_field_and_rule(client_a, schedule, mentions):
    recipe, infra, dist = _parts(client_a)
    with raises("InvalidParameterValueException", 400, mentions=mentions):
        client_a.create_image_pipeline(
            name=unique("bad"), containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
            schedule=schedule)


def test_the_rebuild_when_tag_is_checked(client_a):
    recipe, infra, _ = _parts(client_a)
    with raises("InvalidParameterValueException", 400, mentions=("kiln:rebuildWhen", "osPackages")):
        client_a.create_image_pipeline(
            name=unique("tag"), containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
            schedule={"scheduleExpression": "rate(1 day)"}, tags={"kiln:rebuildWhen": "packages"})
    pipe = client_a.create_image_pipeline(
        name=unique("tag"), containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        schedule={"scheduleExpression": "rate(1 day)"},
        tags={"kiln:rebuildWhen": "parentDigest,osPackages"})["imagePipelineArn"]
    assert client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]["tags"] == {
        "kiln:rebuildWhen": "parentDigest,osPackages"}
    # Tagged later, it is checked the same way, and a refused tag changes nothing.
    with raises("InvalidParameterValueException", 400, mentions=("kiln:rebuildWhen", "sometimes")):
        client_a.tag_resource(resourceArn=pipe, tags={"kiln:rebuildWhen": "sometimes"})
    client_a.tag_resource(resourceArn=pipe, tags={"kiln:rebuildWhen": "osPackages"})
    assert client_a.list_tags_for_resource(resourceArn=pipe)["tags"] == {"kiln:rebuildWhen": "osPackages"}


def _scheduled_images(client, pipe):
    return [i for i in client.list_image_pipeline_images(imagePipelineArn=pipe)["imageSummaryList"]
            if i.get("buildType") == "SCHEDULED"]


@pytest.mark.build
def test_a_pipeline_scheduled_every_minute_builds_by_itself(client_a):
    pipe = _pipeline(client_a, {"scheduleExpression": "cron(* * * * ? *)",
                                "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"})
    t0 = time.monotonic()
    try:
        while not _scheduled_images(client_a, pipe):
            assert time.monotonic() - t0 < 120, "no SCHEDULED image within two minutes"
            time.sleep(2)
        print(f"  a SCHEDULED image after {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        client_a.update_image_pipeline(
            imagePipelineArn=pipe, status="DISABLED", **{k: v for k, v in client_a.get_image_pipeline(
                imagePipelineArn=pipe)["imagePipeline"].items() if k in (
                    "containerRecipeArn", "infrastructureConfigurationArn", "distributionConfigurationArn",
                    "schedule")})
    image = _scheduled_images(client_a, pipe)[0]
    done, _ = wait_for_image(client_a, image["arn"])
    assert done["state"]["status"] == "AVAILABLE", done["state"]
    assert done["buildType"] == "SCHEDULED"
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert got["status"] == "DISABLED" and "dateNextRun" not in got
    assert got["lastRunStatus"] in ("AVAILABLE", "PENDING", "BUILDING", "TESTING", "DISTRIBUTING", "CANCELLED")
    assert got["dateLastRun"]


def _busy(client, n=2):
    """Builds that hold the server's queue (its concurrency is 2) for two minutes."""
    from helpers import document
    comp = create_component(client, data=document(unique("busy"), build="sleep 120"))
    recipe = create_container_recipe(client, [comp])
    infra, dist = create_infrastructure(client), create_distribution(client)
    images = [client.create_image(containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
                                  distributionConfigurationArn=dist)["imageBuildVersionArn"] for _ in range(n)]
    deadline = time.monotonic() + 300
    while any(client.get_image(imageBuildVersionArn=i)["image"]["state"]["status"] == "PENDING" for i in images):
        assert time.monotonic() < deadline, "the busy builds never started"
        time.sleep(1)
    return images


@pytest.mark.build
def test_two_starts_of_a_waiting_pipeline_make_one_build(client_a):
    from concurrent.futures import ThreadPoolExecutor
    busy, arns = _busy(client_a), []
    try:
        pipe = _pipeline(client_a, {"scheduleExpression": "rate(1 day)"})
        with ThreadPoolExecutor(2) as pool:
            arns = list(pool.map(lambda _: client_a.start_image_pipeline_execution(
                imagePipelineArn=pipe, clientToken=unique("t"))["imageBuildVersionArn"], range(2)))
        assert arns[0] == arns[1], f"two builds of one waiting pipeline: {arns}"
        images = client_a.list_image_pipeline_images(imagePipelineArn=pipe)["imageSummaryList"]
        assert [i["arn"] for i in images] == [arns[0]], images
        assert images[0]["buildType"] == "USER_INITIATED"
    finally:
        for i in busy + arns[:1]:
            try:
                client_a.cancel_image_creation(imageBuildVersionArn=i, clientToken=unique("c"))
            except client_a.exceptions.ClientError:
                pass
