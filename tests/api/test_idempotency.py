"""clientToken: the same token with the same request is the same answer; with another request an
IdempotentParameterMismatchException; tokens are per account and per operation."""

from helpers import arn, create_component, create_container_recipe, document, raises, token, unique


def test_same_token_same_request(client_a, account_a):
    t = token()
    name = unique("comp")
    kw = dict(name=name, semanticVersion="1.0.0", platform="Linux", data=document(name), clientToken=t)
    first = client_a.create_component(**kw)
    again = client_a.create_component(**kw)
    assert first["componentBuildVersionArn"] == again["componentBuildVersionArn"] == arn(
        account_a, "component", name, "1.0.0", "1")
    assert first["clientToken"] == again["clientToken"] == t
    # One component, not two (no 1.0.0/2).
    builds = client_a.list_component_build_versions(
        componentVersionArn=arn(account_a, "component", name, "1.0.0"))["componentSummaryList"]
    assert len(builds) == 1


def test_same_token_other_request(client_a):
    t = token()
    name = unique("comp")
    client_a.create_component(name=name, semanticVersion="1.0.0", platform="Linux", data=document(name),
                              clientToken=t)
    with raises("IdempotentParameterMismatchException", 400):
        client_a.create_component(name=name, semanticVersion="1.0.1", platform="Linux", data=document(name),
                                  clientToken=t)
    with raises("IdempotentParameterMismatchException", 400):
        client_a.create_component(name=unique("comp"), semanticVersion="1.0.0", platform="Linux",
                                  data=document(name), clientToken=t)


def test_tokens_are_per_account(client_a, client_b, account_b):
    t = token()
    name = unique("comp")
    client_a.create_component(name=name, semanticVersion="1.0.0", platform="Linux", data=document(name),
                              clientToken=t)
    other = unique("comp")
    r = client_b.create_component(name=other, semanticVersion="1.0.0", platform="Linux", data=document(other),
                                  clientToken=t)
    assert r["componentBuildVersionArn"] == arn(account_b, "component", other, "1.0.0", "1")
    assert r["clientToken"] == t


def test_tokens_are_per_operation(client_a, account_a):
    t = token()
    comp = create_component(client_a, clientToken=t)
    name = unique("infra")
    r = client_a.create_infrastructure_configuration(name=name, instanceProfileName="kiln-builder", clientToken=t)
    assert r["infrastructureConfigurationArn"] == arn(account_a, "infrastructure-configuration", name)
    recipe = create_container_recipe(client_a, [comp], clientToken=t)
    assert recipe.startswith(arn(account_a, "container-recipe", ""))


def test_update_with_a_token(client_a):
    t = token()
    infra = client_a.create_infrastructure_configuration(name=unique("infra"), instanceProfileName="kiln-builder")[
        "infrastructureConfigurationArn"]
    kw = dict(infrastructureConfigurationArn=infra, instanceProfileName="kiln-builder", description="once",
              clientToken=t)
    a = client_a.update_infrastructure_configuration(**kw)
    b = client_a.update_infrastructure_configuration(**kw)
    assert a["clientToken"] == b["clientToken"] == t
    assert a["infrastructureConfigurationArn"] == b["infrastructureConfigurationArn"] == infra
    with raises("IdempotentParameterMismatchException", 400):
        client_a.update_infrastructure_configuration(**{**kw, "description": "twice"})
