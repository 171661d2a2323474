"""SigV4 authentication and account isolation."""

import pytest

from helpers import (REGION, arn, create_component, create_container_recipe, create_distribution,
                     create_infrastructure, raises, unique)

NOT_YOURS = {"ResourceNotFoundException": 404, "AccessDeniedException": 403, "ForbiddenException": 403}


def test_wrong_secret(client_for, account_a):
    client = client_for(account_a, secret=account_a.secret_access_key + "x")
    with raises("InvalidSignatureException", 403):
        client.list_components()


def test_unknown_key(client_for, account_a):
    client = client_for(account_a, key="AKIA" + "Z" * 16, secret="whatever")
    with raises("UnrecognizedClientException", 403):
        client.list_components()


def test_session_token_is_refused_clearly(client_for, account_a):
    # kiln issues no temporary credentials: a request carrying X-Amz-Security-Token is refused,
    # with a message that says why, rather than the token being ignored.
    client = client_for(account_a, token="FwoGZXIvYXdzEXAMPLETOKEN")
    with pytest.raises(Exception) as info:
        client.list_components()
    err = getattr(info.value, "response", {}).get("Error", {})
    status = getattr(info.value, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    assert err.get("Code") in ("UnrecognizedClientException", "InvalidSignatureException",
                               "AccessDeniedException"), info.value
    assert status == 403, status
    assert "token" in err.get("Message", "").lower(), err


def test_unsigned(client_for, raw):
    client = client_for(None, signed=False)
    with pytest.raises(Exception) as info:
        client.list_components()
    resp = getattr(info.value, "response", {})
    assert resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403, info.value
    assert resp["Error"]["Code"] in ("MissingAuthenticationTokenException", "AccessDeniedException",
                                     "IncompleteSignatureException"), resp["Error"]
    a = raw("ListComponents", "POST", "/ListComponents", "{}", sign=False)
    assert a.status == 403, (a.status, a.body)


def test_deleted_key_stops_working(kiln, client_for, account_a):
    key = kiln.json("account", "key", "create", account_a.name, "-o", "json")
    assert set(key) >= {"accessKeyId", "secretAccessKey"}, key
    second = client_for(account_a, key=key["accessKeyId"], secret=key["secretAccessKey"])
    second.list_components()
    kiln.run("account", "key", "delete", account_a.name, key["accessKeyId"])
    with raises("UnrecognizedClientException", 403):
        second.list_components()


def _not_yours(call, also=None, **kw):
    with pytest.raises(Exception) as info:
        call(**kw)
    resp = getattr(info.value, "response", None)
    assert resp is not None, info.value
    code, status = resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"]
    allowed = dict(NOT_YOURS, **(also or {}))
    assert allowed.get(code) == status, f"{call.__name__}: {code} {status}: {resp['Error'].get('Message')}"
    return resp["Error"].get("Message", "")


def test_accounts_are_isolated(client_a, client_b, account_a, account_b):
    comp = create_component(client_a, tags={"owner": "a"})
    recipe = create_container_recipe(client_a, [comp])
    infra = create_infrastructure(client_a, description="a's")
    dist = create_distribution(client_a)
    pipe = client_a.create_image_pipeline(name=unique("pipe"), containerRecipeArn=recipe,
                                          infrastructureConfigurationArn=infra,
                                          distributionConfigurationArn=dist)["imagePipelineArn"]

    # B cannot see A's resources...
    with raises("ResourceNotFoundException", 404):
        client_b.get_component(componentBuildVersionArn=comp)
    with raises("ResourceNotFoundException", 404):
        client_b.get_container_recipe(containerRecipeArn=recipe)
    with raises("ResourceNotFoundException", 404):
        client_b.get_infrastructure_configuration(infrastructureConfigurationArn=infra)
    with raises("ResourceNotFoundException", 404):
        client_b.get_distribution_configuration(distributionConfigurationArn=dist)
    with raises("ResourceNotFoundException", 404):
        client_b.get_image_pipeline(imagePipelineArn=pipe)
    listed = [c["arn"] for c in client_b.list_components()["componentVersionList"]]
    assert not any(a.startswith(arn(account_a, "")) for a in listed), listed
    assert pipe not in [p["arn"] for p in client_b.list_image_pipelines()["imagePipelineList"]]
    assert infra not in [i["arn"] for i in client_b.list_infrastructure_configurations()[
        "infrastructureConfigurationSummaryList"]]
    # ...nor change, tag, start or delete them...
    _not_yours(client_b.update_infrastructure_configuration, infrastructureConfigurationArn=infra,
               instanceProfileName="kiln-builder", description="b's")
    _not_yours(client_b.tag_resource, resourceArn=comp, tags={"owner": "b"})
    _not_yours(client_b.untag_resource, resourceArn=comp, tagKeys=["owner"])
    _not_yours(client_b.list_tags_for_resource, resourceArn=comp)
    _not_yours(client_b.start_image_pipeline_execution, imagePipelineArn=pipe)
    _not_yours(client_b.delete_image_pipeline, imagePipelineArn=pipe)
    _not_yours(client_b.delete_component, componentBuildVersionArn=comp)
    # ...nor use them in their own resources.
    # (a recipe naming a component it cannot see is refused as a bad field, naming it)
    message = _not_yours(create_container_recipe, client=client_b, components=[comp],
                         also={"InvalidParameterValueException": 400})
    assert "components[0]" in message, message
    # ...and nothing of it was applied.
    assert client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)[
        "infrastructureConfiguration"]["description"] == "a's"
    assert client_a.list_tags_for_resource(resourceArn=comp)["tags"] == {"owner": "a"}
    client_a.get_component(componentBuildVersionArn=comp)
    client_a.get_image_pipeline(imagePipelineArn=pipe)
    assert client_a.list_image_pipeline_images(imagePipelineArn=pipe).get("imageSummaryList", []) == []


def test_names_are_per_account(client_a, client_b, account_a, account_b):
    name = unique("comp")
    a = create_component(client_a, name)
    b = create_component(client_b, name)
    assert a == arn(account_a, "component", name, "1.0.0", "1")
    assert b == arn(account_b, "component", name, "1.0.0", "1")
    assert account_a.account_id != account_b.account_id
    # B's ARN is B's, whatever account an ARN in B's request names.
    assert b.split(":")[4] == account_b.account_id and REGION == b.split(":")[3]
