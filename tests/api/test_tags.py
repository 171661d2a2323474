"""Tags at /tags/{resourceArn}: the ARN percent-encoded in one path segment."""

import urllib.parse

from helpers import arn, create_component, create_infrastructure, raises, unique


def test_tag_list_untag(client_a):
    comp = create_component(client_a, tags={"team": "web"})
    assert client_a.list_tags_for_resource(resourceArn=comp)["tags"] == {"team": "web"}

    client_a.tag_resource(resourceArn=comp, tags={"env": "test", "team": "platform"})
    assert client_a.list_tags_for_resource(resourceArn=comp)["tags"] == {"env": "test", "team": "platform"}

    client_a.untag_resource(resourceArn=comp, tagKeys=["team", "not-there"])
    assert client_a.list_tags_for_resource(resourceArn=comp)["tags"] == {"env": "test"}
    # The resource shows the same tags.
    assert client_a.get_component(componentBuildVersionArn=comp)["component"]["tags"] == {"env": "test"}

    client_a.untag_resource(resourceArn=comp, tagKeys=["env"])
    assert client_a.list_tags_for_resource(resourceArn=comp).get("tags", {}) == {}


def test_tags_on_other_kinds(client_a):
    infra = create_infrastructure(client_a, tags={"a": "1"})
    client_a.tag_resource(resourceArn=infra, tags={"b": "2"})
    assert client_a.list_tags_for_resource(resourceArn=infra)["tags"] == {"a": "1", "b": "2"}
    got = client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)
    assert got["infrastructureConfiguration"]["tags"] == {"a": "1", "b": "2"}


def test_tags_of_missing_resource(client_a, account_a):
    missing = arn(account_a, "component", unique("no"), "1.0.0", "1")
    with raises("ResourceNotFoundException", 404):
        client_a.list_tags_for_resource(resourceArn=missing)
    with raises("ResourceNotFoundException", 404):
        client_a.tag_resource(resourceArn=missing, tags={"a": "b"})
    with raises("ResourceNotFoundException", 404):
        client_a.untag_resource(resourceArn=missing, tagKeys=["a"])


def test_bad_tags(client_a):
    comp = create_component(client_a)
    # Keys starting with aws: are reserved (TagKey's pattern); botocore does not check patterns.
    with raises("InvalidParameterException", 400, mentions="aws:"):
        client_a.tag_resource(resourceArn=comp, tags={"aws:owner": "me"})
    with raises("InvalidParameterException", 400):
        client_a.tag_resource(resourceArn=comp, tags={f"k{i}": "v" for i in range(51)})
    assert client_a.list_tags_for_resource(resourceArn=comp).get("tags", {}) == {}


def test_raw_path_is_one_percent_encoded_segment(client_a, raw):
    comp = create_component(client_a, tags={"team": "web"})
    path = "/tags/" + urllib.parse.quote(comp, safe="")
    a = raw("ListTagsForResource", "GET", path)
    assert a.status == 200, (a.status, a.body)
    assert a.json == {"tags": {"team": "web"}}
    a = raw("TagResource", "POST", path, {"tags": {"env": "raw"}})
    assert a.status == 200, (a.status, a.body)
    a = raw("UntagResource", "DELETE", path, query={"tagKeys": "env"})
    assert a.status == 200, (a.status, a.body)
    assert client_a.list_tags_for_resource(resourceArn=comp)["tags"] == {"team": "web"}


def test_through_the_aws_cli(aws, client_a):
    comp = create_component(client_a)
    aws("imagebuilder", "tag-resource", "--resource-arn", comp, "--tags", "team=web,env=cli")
    got = aws("imagebuilder", "list-tags-for-resource", "--resource-arn", comp).json
    assert got["tags"] == {"team": "web", "env": "cli"}
    aws("imagebuilder", "untag-resource", "--resource-arn", comp, "--tag-keys", "env")
    got = aws("imagebuilder", "list-tags-for-resource", "--resource-arn", comp).json
    assert got["tags"] == {"team": "web"}
