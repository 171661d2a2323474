"""Components: create, get, list, list build versions, delete; their errors; malformed requests."""

import json

from helpers import arn, create_component, document, raises, unique


def test_create_get_list_delete(client_a, account_a):
    name = unique("comp")
    data = document(name, build="echo built > /tmp/built")
    r = client_a.create_component(name=name, semanticVersion="1.0.0", platform="Linux", data=data,
                                  description="a component of the API tests")
    build_arn = r["componentBuildVersionArn"]
    assert build_arn == arn(account_a, "component", name, "1.0.0", "1")

    c = client_a.get_component(componentBuildVersionArn=build_arn)["component"]
    assert c["arn"] == build_arn
    assert c["name"] == name
    assert c["version"] == "1.0.0"
    assert c["platform"] == "Linux"
    assert c["description"] == "a component of the API tests"
    assert c["data"] == data
    assert c.get("owner", account_a.account_id) == account_a.account_id

    listed = client_a.list_components(filters=[{"name": "name", "values": [name]}])["componentVersionList"]
    version_arn = arn(account_a, "component", name, "1.0.0")
    assert [v["arn"] for v in listed] == [version_arn]
    assert listed[0]["name"] == name and listed[0]["version"] == "1.0.0"

    builds = client_a.list_component_build_versions(componentVersionArn=version_arn)["componentSummaryList"]
    assert [b["arn"] for b in builds] == [build_arn]

    d = client_a.delete_component(componentBuildVersionArn=build_arn)
    assert d["componentBuildVersionArn"] == build_arn
    with raises("ResourceNotFoundException", 404):
        client_a.get_component(componentBuildVersionArn=build_arn)
    listed = client_a.list_components(filters=[{"name": "name", "values": [name]}])["componentVersionList"]
    assert listed == []


def test_versions_of_one_name(client_a, account_a):
    name = unique("comp")
    first = create_component(client_a, name, "1.0.0")
    second = create_component(client_a, name, "1.0.1", data=document(name, build="echo two"))
    assert first == arn(account_a, "component", name, "1.0.0", "1")
    assert second == arn(account_a, "component", name, "1.0.1", "1")
    listed = client_a.list_components(filters=[{"name": "name", "values": [name]}])["componentVersionList"]
    assert sorted(v["version"] for v in listed) == ["1.0.0", "1.0.1"]
    # The version ARN (x.y.z, no build number) names the newest build of that version.
    got = client_a.get_component(componentBuildVersionArn=arn(account_a, "component", name, "1.0.1"))
    assert got["component"]["arn"] == second


def test_missing_component_is_404(client_a, account_a):
    missing = arn(account_a, "component", unique("nothing"), "1.0.0", "1")
    with raises("ResourceNotFoundException", 404):
        client_a.get_component(componentBuildVersionArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.delete_component(componentBuildVersionArn=missing)


def test_same_name_and_version_with_other_content(client_a):
    name = unique("comp")
    create_component(client_a, name, "1.0.0")
    with raises("ResourceAlreadyExistsException", 400, mentions=name):
        create_component(client_a, name, "1.0.0", data=document(name, build="echo other"))


def test_invalid_version_number(client_a):
    with raises("InvalidVersionNumberException", 400, mentions="1.0"):
        client_a.create_component(name=unique("comp"), semanticVersion="1.0", platform="Linux",
                                  data=document())


def test_bad_field_is_named(client_a):
    # botocore checks neither enums nor patterns: the server must.
    with raises("InvalidParameterValueException", 400, mentions="platform"):
        client_a.create_component(name=unique("comp"), semanticVersion="1.0.0", platform="Plan9",
                                  data=document())
    with raises("InvalidParameterValueException", 400, mentions="name"):
        client_a.create_component(name="no spaces/or slashes!", semanticVersion="1.0.0",
                                  platform="Linux", data=document())


def test_invalid_document_is_a_client_error(client_a):
    bad = "name: broken\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: X\n        action: NoSuchAction\n"
    with raises("InvalidParameterValueException", 400, mentions="NoSuchAction"):
        client_a.create_component(name=unique("comp"), semanticVersion="1.0.0", platform="Linux", data=bad)


def _body(**over):
    b = {"name": unique("comp"), "semanticVersion": "1.0.0", "platform": "Linux",
         "clientToken": unique("tok"), "data": document()}
    b.update(over)
    return b


def test_malformed_json_is_400(raw):
    a = raw("CreateComponent", "PUT", "/CreateComponent", '{"name": "half', )
    assert a.status == 400, (a.status, a.body)
    a = raw("CreateComponent", "PUT", "/CreateComponent", "[1, 2]")
    assert a.status == 400, (a.status, a.body)


def test_wrong_types_are_400_naming_the_field(raw):
    for field, value in [("name", 5), ("semanticVersion", ["1.0.0"]), ("tags", "team=web"),
                         ("platform", None), ("data", {"phases": []})]:
        a = raw("CreateComponent", "PUT", "/CreateComponent", json.dumps(_body(**{field: value})))
        assert a.status == 400, (field, a.status, a.body)
        assert field in a.json.get("message", a.json.get("Message", "")), (field, a.body)


def test_missing_required_member_is_400_naming_it(raw):
    body = _body()
    del body["semanticVersion"]
    a = raw("CreateComponent", "PUT", "/CreateComponent", json.dumps(body))
    assert a.status == 400, (a.status, a.body)
    assert "semanticVersion" in a.json.get("message", a.json.get("Message", "")), a.body


def test_unknown_operation_is_a_client_error(raw):
    a = raw(None, "PUT", "/CreateWidget", "{}")
    assert 400 <= a.status < 500, (a.status, a.body)
    a = raw(None, "GET", "/GetComponent")  # required query member missing
    assert 400 <= a.status < 500, (a.status, a.body)


def test_through_the_aws_cli(aws, account_a):
    name = unique("comp")
    made = aws("imagebuilder", "create-component", "--name", name, "--semantic-version", "2.0.0",
               "--platform", "Linux", "--data", document(name)).json
    build_arn = arn(account_a, "component", name, "2.0.0", "1")
    assert made["componentBuildVersionArn"] == build_arn
    got = aws("imagebuilder", "get-component", "--component-build-version-arn", build_arn).json
    assert got["component"]["name"] == name
    listed = aws("imagebuilder", "list-components", "--filters", f"name=name,values={name}").json
    assert [c["arn"] for c in listed["componentVersionList"]] == [arn(account_a, "component", name, "2.0.0")]
    missing = aws("imagebuilder", "get-component", "--component-build-version-arn",
                  arn(account_a, "component", unique("nothing"), "1.0.0", "1"), check=False)
    assert missing.code != 0 and "ResourceNotFoundException" in missing.stderr, missing.stderr
    aws("imagebuilder", "delete-component", "--component-build-version-arn", build_arn)
