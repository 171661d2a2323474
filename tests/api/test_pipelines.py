"""Image pipelines: create, get, list, update, delete, their images; no build runs here (see
test_images.py for pipelines started through the API)."""

from helpers import (arn, create_component, create_container_recipe, create_distribution,
                     create_infrastructure, raises, unique)


def _parts(client):
    comp = create_component(client)
    recipe = create_container_recipe(client, [comp])
    return recipe, create_infrastructure(client), create_distribution(client)


def test_create_get_list_update_delete(client_a, account_a):
    recipe, infra, dist = _parts(client_a)
    name = unique("pipe")
    r = client_a.create_image_pipeline(
        name=name, description="first", containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        distributionConfigurationArn=dist,
        imageTestsConfiguration={"imageTestsEnabled": True, "timeoutMinutes": 60})
    pipe = r["imagePipelineArn"]
    assert pipe == arn(account_a, "image-pipeline", name)

    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert got["arn"] == pipe and got["name"] == name and got["description"] == "first"
    assert got["containerRecipeArn"] == recipe
    assert got["infrastructureConfigurationArn"] == infra
    assert got["distributionConfigurationArn"] == dist
    assert "imageRecipeArn" not in got
    # A pipeline is ENABLED unless created otherwise (AWS's default).
    assert got["status"] == "ENABLED"
    assert got["imageTestsConfiguration"]["imageTestsEnabled"] is True

    listed = client_a.list_image_pipelines(filters=[{"name": "name", "values": [name]}])["imagePipelineList"]
    assert [p["arn"] for p in listed] == [pipe]

    images = client_a.list_image_pipeline_images(imagePipelineArn=pipe)
    assert images.get("imageSummaryList", []) == []

    u = client_a.update_image_pipeline(imagePipelineArn=pipe, description="second", containerRecipeArn=recipe,
                                       infrastructureConfigurationArn=infra, distributionConfigurationArn=dist,
                                       status="DISABLED")
    assert u["imagePipelineArn"] == pipe
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert got["description"] == "second" and got["status"] == "DISABLED"

    assert client_a.delete_image_pipeline(imagePipelineArn=pipe)["imagePipelineArn"] == pipe
    with raises("ResourceNotFoundException", 404):
        client_a.get_image_pipeline(imagePipelineArn=pipe)


def test_schedule_round_trips(client_a):
    recipe, infra, dist = _parts(client_a)
    schedule = {"scheduleExpression": "cron(0 4 ? * MON *)", "timezone": "Europe/Paris",
                "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"}
    pipe = client_a.create_image_pipeline(name=unique("pipe"), containerRecipeArn=recipe,
                                          infrastructureConfigurationArn=infra,
                                          distributionConfigurationArn=dist, schedule=schedule)["imagePipelineArn"]
    got = client_a.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]
    assert {k: got["schedule"].get(k) for k in schedule} == schedule
    with raises("InvalidParameterValueException", 400, mentions="scheduleExpression"):
        client_a.create_image_pipeline(name=unique("pipe"), containerRecipeArn=recipe,
                                       infrastructureConfigurationArn=infra,
                                       schedule={"scheduleExpression": "cron(every day)"})


def test_pipeline_errors(client_a, account_a):
    recipe, infra, dist = _parts(client_a)
    missing = arn(account_a, "image-pipeline", unique("no"))
    with raises("ResourceNotFoundException", 404):
        client_a.start_image_pipeline_execution(imagePipelineArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.list_image_pipeline_images(imagePipelineArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.update_image_pipeline(imagePipelineArn=missing, infrastructureConfigurationArn=infra,
                                       containerRecipeArn=recipe)
    with raises("ResourceNotFoundException", 404):
        client_a.create_image_pipeline(name=unique("pipe"), containerRecipeArn=recipe,
                                       infrastructureConfigurationArn=arn(account_a, "infrastructure-configuration",
                                                                          unique("no")))
    # Neither an image recipe nor a container recipe: nothing to build.
    with raises("InvalidParameterValueException", 400):
        client_a.create_image_pipeline(name=unique("pipe"), infrastructureConfigurationArn=infra)
    name = unique("pipe")
    client_a.create_image_pipeline(name=name, containerRecipeArn=recipe, infrastructureConfigurationArn=infra)
    with raises("ResourceAlreadyExistsException", 400, mentions=name):
        client_a.create_image_pipeline(name=name, containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
                                       description="other")


def test_configurations_in_use_cannot_be_deleted(client_a):
    recipe, infra, dist = _parts(client_a)
    pipe = client_a.create_image_pipeline(name=unique("pipe"), containerRecipeArn=recipe,
                                          infrastructureConfigurationArn=infra,
                                          distributionConfigurationArn=dist)["imagePipelineArn"]
    with raises("ResourceDependencyException", 400):
        client_a.delete_infrastructure_configuration(infrastructureConfigurationArn=infra)
    with raises("ResourceDependencyException", 400):
        client_a.delete_distribution_configuration(distributionConfigurationArn=dist)
    with raises("ResourceDependencyException", 400):
        client_a.delete_container_recipe(containerRecipeArn=recipe)
    client_a.delete_image_pipeline(imagePipelineArn=pipe)
    client_a.delete_infrastructure_configuration(infrastructureConfigurationArn=infra)
    client_a.delete_distribution_configuration(distributionConfigurationArn=dist)
    client_a.delete_container_recipe(containerRecipeArn=recipe)


def test_through_the_aws_cli(aws, client_a, account_a):
    recipe, infra, dist = _parts(client_a)
    name = unique("pipe")
    made = aws("imagebuilder", "create-image-pipeline", "--name", name, "--container-recipe-arn", recipe,
               "--infrastructure-configuration-arn", infra, "--distribution-configuration-arn", dist).json
    pipe = arn(account_a, "image-pipeline", name)
    assert made["imagePipelineArn"] == pipe
    got = aws("imagebuilder", "get-image-pipeline", "--image-pipeline-arn", pipe).json
    assert got["imagePipeline"]["containerRecipeArn"] == recipe
    listed = aws("imagebuilder", "list-image-pipeline-images", "--image-pipeline-arn", pipe).json
    assert listed.get("imageSummaryList", []) == []
