"""Lifecycle policies through the API: create, get, list, update, delete, their checks with the
field named, and executions (none until a policy runs; a finished one cannot be cancelled)."""

from helpers import arn, raises, unique

RULES = [{"action": {"type": "DELETE"}, "filter": {"type": "COUNT", "value": 2}}]


def _create(client, name, **extra):
    return client.create_lifecycle_policy(
        name=name, executionRole="arn:aws:iam::123456789012:role/lifecycle",
        resourceType="AMI_IMAGE", policyDetails=RULES,
        resourceSelection={"recipes": [{"name": "web", "semanticVersion": "1.x.x"}]}, **extra)


def test_lifecycle_policy(client_a, account_a):
    name = unique("keep")
    r = _create(client_a, name, description="keep two", tags={"team": "web"})
    policy = r["lifecyclePolicyArn"]
    assert policy == arn(account_a, "lifecycle-policy", name)

    got = client_a.get_lifecycle_policy(lifecyclePolicyArn=policy)["lifecyclePolicy"]
    assert got["name"] == name and got["status"] == "ENABLED"
    assert got["resourceType"] == "AMI_IMAGE"
    assert got["policyDetails"] == RULES
    assert got["executionRole"].endswith("role/lifecycle")
    assert got["tags"] == {"team": "web"}
    assert "dateCreated" in got and "dateLastRun" not in got

    listed = client_a.list_lifecycle_policies(filters=[{"name": "name", "values": [name]}])
    assert [p["arn"] for p in listed["lifecyclePolicySummaryList"]] == [policy]

    client_a.update_lifecycle_policy(
        lifecyclePolicyArn=policy, executionRole="role", resourceType="AMI_IMAGE", status="DISABLED",
        policyDetails=[{"action": {"type": "DEPRECATE"},
                        "filter": {"type": "AGE", "value": 3, "unit": "MONTHS", "retainAtLeast": 2}}],
        resourceSelection={"tagMap": {"lifecycle": "managed"}})
    got = client_a.get_lifecycle_policy(lifecyclePolicyArn=policy)["lifecyclePolicy"]
    assert got["status"] == "DISABLED"
    assert got["policyDetails"][0]["filter"]["retainAtLeast"] == 2
    assert got["resourceSelection"] == {"tagMap": {"lifecycle": "managed"}}
    assert got["tags"] == {"team": "web"}, "an update keeps the tags"

    assert client_a.list_lifecycle_executions(resourceArn=policy)["lifecycleExecutions"] == []
    with raises("ResourceNotFoundException", 404):
        client_a.get_lifecycle_execution(lifecycleExecutionId="lce-00000000-0000-0000-0000-000000000000")
    with raises("ResourceNotFoundException", 404):
        client_a.cancel_lifecycle_execution(
            lifecycleExecutionId="lce-00000000-0000-0000-0000-000000000000")

    assert client_a.delete_lifecycle_policy(lifecyclePolicyArn=policy)["lifecyclePolicyArn"] == policy
    with raises("ResourceNotFoundException", 404):
        client_a.get_lifecycle_policy(lifecyclePolicyArn=policy)


def test_bad_policies_name_the_member(client_a):
    with raises("InvalidParameterValueException", 400, mentions=("policyDetails[0].filter", "unit")):
        client_a.create_lifecycle_policy(
            name=unique("bad"), executionRole="r", resourceType="AMI_IMAGE",
            policyDetails=[{"action": {"type": "DELETE"}, "filter": {"type": "AGE", "value": 3}}],
            resourceSelection={"recipes": [{"name": "web", "semanticVersion": "1.x.x"}]})
    with raises("InvalidParameterValueException", 400, mentions="policyDetails[0].action.type"):
        client_a.create_lifecycle_policy(
            name=unique("bad"), executionRole="r", resourceType="CONTAINER_IMAGE",
            policyDetails=[{"action": {"type": "DISABLE"}, "filter": {"type": "COUNT", "value": 3}}],
            resourceSelection={"recipes": [{"name": "web", "semanticVersion": "1.x.x"}]})
    with raises("InvalidParameterValueException", 400, mentions="resourceSelection"):
        client_a.create_lifecycle_policy(
            name=unique("bad"), executionRole="r", resourceType="AMI_IMAGE", policyDetails=RULES,
            resourceSelection={})


def test_another_accounts_policy_is_not_found(client_a, client_b):
    policy = _create(client_a, unique("mine"))["lifecyclePolicyArn"]
    with raises("ResourceNotFoundException", 404):
        client_b.get_lifecycle_policy(lifecyclePolicyArn=policy)
    with raises("ResourceNotFoundException", 404):
        client_b.list_lifecycle_executions(resourceArn=policy)
