"""The model checker itself, on hand-made answers: it passes good ones and names what is wrong
with bad ones. Needs no server."""

import json

import pytest

from model import Answer, ModelChecker, Problem, Recorder

ACCOUNT = "123456789012"
COMPONENT = f"arn:kiln:imagebuilder:local:{ACCOUNT}:component/hello/1.0.0/1"
IMAGE = f"arn:kiln:imagebuilder:local:{ACCOUNT}:image/web/1.0.0/3"

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def checker():
    return ModelChecker()


def ok(checker, op, data):
    problems = checker.check_success(op, json.dumps(data).encode())
    assert problems == [], "\n".join(map(str, problems))


def bad(checker, op, data, path, words):
    problems = checker.check_success(op, json.dumps(data).encode())
    assert problems, f"{op}: {data} passed"
    hits = [p for p in problems if p.path == path and words in p.what]
    assert hits, f"wanted {path}: ...{words}..., got:\n" + "\n".join(map(str, problems))
    return problems


def component(**over):
    c = {
        "arn": COMPONENT,
        "name": "hello",
        "version": "1.0.0",
        "type": "BUILD",
        "platform": "Linux",
        "owner": ACCOUNT,
        "data": "name: hello\n",
        "dateCreated": "2026-12-01T20:00:00.000Z",
        "encrypted": False,
        "tags": {"team": "web"},
    }
    c.update(over)
    return c


def image(**over):
    i = {
        "arn": IMAGE,
        "name": "web",
        "version": "1.0.0/3",
        "type": "DOCKER",
        "platform": "Linux",
        "state": {"status": "AVAILABLE"},
        "dateCreated": "2026-12-01T20:00:00.000Z",
        "outputResources": {
            "containers": [{"region": "local", "imageUris": ["local/web:1.0.0", "local/web:1.0.0-3"]}]
        },
    }
    i.update(over)
    return i


# -- success bodies ---------------------------------------------------------------------------


def test_good_bodies_pass(checker):
    ok(checker, "GetComponent", {"requestId": "r-1", "component": component()})
    ok(checker, "CreateComponent", {"requestId": "r", "clientToken": "t", "componentBuildVersionArn": COMPONENT})
    ok(checker, "GetImage", {"requestId": "r", "image": image()})
    ok(checker, "ListComponents", {"requestId": "r", "componentVersionList": [], "nextToken": "abc"})
    ok(checker, "ListTagsForResource", {"tags": {"a": "b"}})
    ok(checker, "ListTagsForResource", {"tags": {}})
    ok(checker, "TagResource", {})
    assert checker.check_success("TagResource", b"") == []


def test_kiln_partition_is_allowed_but_nothing_else(checker):
    ok(checker, "CreateComponent", {"componentBuildVersionArn": COMPONENT})
    aws = COMPONENT.replace("arn:kiln:", "arn:aws:")
    ok(checker, "CreateComponent", {"componentBuildVersionArn": aws})
    bad(checker, "CreateComponent", {"componentBuildVersionArn": COMPONENT.replace("arn:kiln:", "arn:other:")},
        "componentBuildVersionArn", "does not match the pattern")
    # An ARN with a version but no build number is not a build version ARN.
    bad(checker, "CreateComponent", {"componentBuildVersionArn": COMPONENT.rsplit("/", 1)[0]},
        "componentBuildVersionArn", "does not match the pattern")


def test_missing_required_member(checker):
    # A component's parameters (ComponentParameterDetail) require name and type.
    c = component(parameters=[{"name": "greeting", "defaultValue": ["hi"]}])
    bad(checker, "GetComponent", {"component": c}, "component.parameters[0].type", "required member")
    # A distribution configuration requires timeoutMinutes, though nothing else in it is.
    dc = {"arn": f"arn:kiln:imagebuilder:local:{ACCOUNT}:distribution-configuration/local", "name": "local",
          "distributions": [{"region": "local"}]}
    bad(checker, "GetDistributionConfiguration", {"distributionConfiguration": dc},
        "distributionConfiguration.timeoutMinutes", "required member")
    dc["timeoutMinutes"] = 30
    ok(checker, "GetDistributionConfiguration", {"distributionConfiguration": dc})
    del dc["distributions"][0]["region"]
    bad(checker, "GetDistributionConfiguration", {"distributionConfiguration": dc},
        "distributionConfiguration.distributions[0].region", "required member")


def test_unknown_member(checker):
    bad(checker, "GetComponent", {"component": component(colour="red")}, "component.colour", "not a member")
    bad(checker, "CreateComponent", {"componentArn": COMPONENT}, "componentArn", "not a member")


def test_wrong_types(checker):
    bad(checker, "GetComponent", {"component": component(encrypted="false")}, "component.encrypted", "boolean")
    bad(checker, "GetComponent", {"component": component(tags=["a"])}, "component.tags", "map")
    bad(checker, "GetComponent", {"component": "hello"}, "component", "structure")
    bad(checker, "ListComponents", {"componentVersionList": {}}, "componentVersionList", "list")
    # An integer member as text; a boolean is no integer.
    recipe = {"arn": f"arn:kiln:imagebuilder:local:{ACCOUNT}:container-recipe/web/1.0.0", "name": "web",
              "instanceConfiguration": {"blockDeviceMappings": [{"ebs": {"volumeSize": "8"}}]}}
    bad(checker, "GetContainerRecipe", {"containerRecipe": recipe},
        "containerRecipe.instanceConfiguration.blockDeviceMappings[0].ebs.volumeSize", "integer")
    recipe["instanceConfiguration"]["blockDeviceMappings"][0]["ebs"]["volumeSize"] = True
    bad(checker, "GetContainerRecipe", {"containerRecipe": recipe},
        "containerRecipe.instanceConfiguration.blockDeviceMappings[0].ebs.volumeSize", "integer")
    # dateCreated is a string (DateTime) in this model, deprecationTime a timestamp.
    bad(checker, "GetImage", {"image": image(dateCreated=1764619200)}, "image.dateCreated", "string")
    ok(checker, "GetImage", {"image": image(deprecationTime=1764619200.5)})
    bad(checker, "GetImage", {"image": image(deprecationTime="2026-12-01T20:00:00Z")}, "image.deprecationTime",
        "epoch seconds")


def test_nested_paths_name_the_item(checker):
    img = image()
    img["outputResources"]["containers"][0]["imageUris"][1] = 7
    bad(checker, "GetImage", {"image": img}, "image.outputResources.containers[0].imageUris[1]", "string")


def test_bad_enum(checker):
    bad(checker, "GetImage", {"image": image(state={"status": "DONE"})}, "image.state.status", "enum")
    bad(checker, "GetComponent", {"component": component(type="build")}, "component.type", "enum")


def test_lengths_ranges_and_patterns(checker):
    bad(checker, "ListTagsForResource", {"tags": {"": "x"}}, "tags{}", "at least 1")
    bad(checker, "ListTagsForResource", {"tags": {"aws:x": "y"}}, "tags{aws:x}", "pattern")
    bad(checker, "GetComponent", {"component": component(version="1.0")}, "component.version", "pattern")
    bad(checker, "GetComponent", {"component": component(description="")}, "component.description", "at least 1")
    bad(checker, "ListTagsForResource", {"tags": {f"k{i}": "v" for i in range(51)}}, "tags", "at most 50")


def test_null_is_not_absence(checker):
    bad(checker, "GetComponent", {"component": component(description=None)}, "component.description", "null")


def test_body_not_json(checker):
    problems = checker.check_success("GetComponent", b"<html>")
    assert problems and "not JSON" in problems[0].what


def test_failure_context_members_are_in_this_model(checker):
    state = {
        "status": "FAILED",
        "reason": "test failed",
        "failureContext": {"componentFailure": {"componentArn": COMPONENT, "phaseName": "test",
                                                "stepName": "Fail", "action": "ExecuteBash",
                                                "errorMessage": "exit 1"}},
    }
    ok(checker, "GetImage", {"image": image(state=state, outputResources={})})


# -- error answers ----------------------------------------------------------------------------


def err(status, code, message="it went wrong", header=True, body=None):
    headers = {"x-amzn-ErrorType": code} if header else {}
    if body is None:
        body = {"__type": code, "message": message}
    return status, headers, json.dumps(body).encode() if not isinstance(body, bytes) else body


def error_problems(checker, op, answer, **kw):
    status, headers, body = answer
    return checker.check_error(op, status, headers, body, **kw)


def test_good_errors_pass(checker):
    assert error_problems(checker, "GetComponent", err(404, "ResourceNotFoundException")) == []
    assert error_problems(checker, "CreateComponent", err(400, "InvalidVersionNumberException")) == []
    assert error_problems(checker, "DeleteComponent", err(400, "ResourceDependencyException")) == []
    assert error_problems(checker, "ListImages", err(403, "UnrecognizedClientException")) == []
    # Message with a capital M, and a namespaced or annotated code, as AWS services send them.
    assert error_problems(checker, "GetImage", err(403, "InvalidSignatureException", body={
        "__type": "com.amazon.coral#InvalidSignatureException", "Message": "no"})) == []
    assert error_problems(checker, "GetImage", (404, {"X-Amzn-Errortype": "ResourceNotFoundException:http://x/"},
                                                b'{"__type":"ResourceNotFoundException","message":"m"}')) == []


def _says(problems, words):
    assert any(words in p.what for p in problems), "\n".join(map(str, problems)) or "no problems"


def test_bad_errors_fail(checker):
    _says(error_problems(checker, "GetComponent", err(500, "ServiceException")), "server error")
    assert error_problems(checker, "GetComponent", err(500, "ServiceException"), server_error_ok=True) == []
    _says(error_problems(checker, "GetComponent", err(404, "ResourceNotFoundException", header=False)),
          "x-amzn-ErrorType")
    _says(error_problems(checker, "GetComponent", err(404, "ResourceNotFoundException", body={"message": "m"})),
          "__type")
    _says(error_problems(checker, "GetComponent", err(404, "ResourceNotFoundException",
                                                      body={"__type": "ResourceNotFoundException"})), "message")
    _says(error_problems(checker, "GetComponent", (404, {"x-amzn-ErrorType": "ResourceNotFoundException"}, b"nope")),
          "not JSON")
    # A status that does not go with the code, a code the operation may not answer, disagreement.
    _says(error_problems(checker, "GetComponent", err(400, "ResourceNotFoundException")), "the model says 404")
    _says(error_problems(checker, "GetComponent", err(400, "ValidationException")), "not one GetComponent may answer")
    _says(error_problems(checker, "GetComponent", err(400, "DryRunOperationException")), "not one")
    _says(error_problems(checker, "GetComponent", err(404, "ResourceNotFoundException",
                                                      body={"__type": "InvalidRequestException", "message": "m"})),
          "disagree")


def test_recorder_collects_and_forgets(checker):
    r = Recorder(checker)
    r.record(Answer("GetComponent", 200, {}, json.dumps({"component": component(type="x")}).encode()))
    r.record(Answer("GetComponent", 404, {"x-amzn-ErrorType": "ResourceNotFoundException"},
                    b'{"__type":"ResourceNotFoundException","message":"gone"}'))
    found = r.take()
    assert [str(p) for p in found] == [
        "GetComponent at component.type: 'x' is not in the enum ComponentType (BUILD, TEST)"
    ]
    assert r.take() == [] and len(r.answers) == 2


def test_recorder_hears_a_real_client(checker):
    """The after-call hook gets the raw answer: botocore's stubbed HTTP layer answers here."""
    import boto3
    from botocore.awsrequest import AWSResponse

    client = boto3.client("imagebuilder", endpoint_url="http://127.0.0.1:9", region_name="local",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    r = Recorder(checker)
    r.attach(client)

    class Raw:
        def stream(self, *a, **k):
            yield b""

    def answer(request, **_):
        body = json.dumps({"component": component(platform="Plan9")}).encode()
        resp = AWSResponse(request.url, 200, {"content-type": "application/json"}, Raw())
        resp._content = body
        return resp

    client.meta.events.register("before-send.imagebuilder", answer)
    client.get_component(componentBuildVersionArn=COMPONENT)
    found = r.take()
    assert len(found) == 1 and found[0].path == "component.platform" and "enum" in found[0].what, found
    assert isinstance(found[0], Problem)
