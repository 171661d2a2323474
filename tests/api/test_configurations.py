"""Infrastructure and distribution configurations: create, get, list, update, delete."""

from helpers import REGION, arn, create_distribution, create_infrastructure, raises, unique


def test_infrastructure_configuration(client_a, account_a):
    name = unique("infra")
    r = client_a.create_infrastructure_configuration(
        name=name, instanceProfileName="kiln-builder", description="first",
        terminateInstanceOnFailure=False, tags={"team": "web"})
    infra = r["infrastructureConfigurationArn"]
    assert infra == arn(account_a, "infrastructure-configuration", name)

    got = client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)["infrastructureConfiguration"]
    assert got["arn"] == infra and got["name"] == name
    assert got["description"] == "first"
    assert got["instanceProfileName"] == "kiln-builder"
    assert got["terminateInstanceOnFailure"] is False
    assert got["tags"] == {"team": "web"}

    listed = client_a.list_infrastructure_configurations(filters=[{"name": "name", "values": [name]}])
    assert [s["arn"] for s in listed["infrastructureConfigurationSummaryList"]] == [infra]

    u = client_a.update_infrastructure_configuration(
        infrastructureConfigurationArn=infra, instanceProfileName="kiln-builder", description="second",
        terminateInstanceOnFailure=True)
    assert u["infrastructureConfigurationArn"] == infra
    got = client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)["infrastructureConfiguration"]
    assert got["description"] == "second"
    assert got["terminateInstanceOnFailure"] is True
    # An update replaces the settings, not the resource's tags.
    assert got["tags"] == {"team": "web"}

    d = client_a.delete_infrastructure_configuration(infrastructureConfigurationArn=infra)
    assert d["infrastructureConfigurationArn"] == infra
    with raises("ResourceNotFoundException", 404):
        client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)
    with raises("ResourceNotFoundException", 404):
        client_a.update_infrastructure_configuration(infrastructureConfigurationArn=infra,
                                                     instanceProfileName="kiln-builder")


def test_distribution_configuration(client_a, account_a):
    name = unique("dist")
    r = client_a.create_distribution_configuration(
        name=name, description="first",
        distributions=[{"region": REGION, "containerDistributionConfiguration": {
            "containerTags": ["latest"], "targetRepository": {"service": "ECR", "repositoryName": name}}}])
    dist = r["distributionConfigurationArn"]
    assert dist == arn(account_a, "distribution-configuration", name)

    got = client_a.get_distribution_configuration(distributionConfigurationArn=dist)["distributionConfiguration"]
    assert got["arn"] == dist and got["name"] == name and got["description"] == "first"
    assert [d["region"] for d in got["distributions"]] == [REGION]
    cdc = got["distributions"][0]["containerDistributionConfiguration"]
    assert cdc["targetRepository"] == {"service": "ECR", "repositoryName": name}
    assert cdc["containerTags"] == ["latest"]
    # Tags and disk names are checked when stored, naming the field.
    with raises("InvalidParameterValueException", 400, mentions=("containerTags", "a container tag")):
        client_a.create_distribution_configuration(
            name=unique("dist"), distributions=[{"region": REGION, "containerDistributionConfiguration": {
                "containerTags": ["-bad"], "targetRepository": {"service": "ECR", "repositoryName": name}}}])
    with raises("InvalidParameterValueException", 400, mentions="imagebuilder:nope"):
        client_a.create_distribution_configuration(
            name=unique("dist"), distributions=[{"region": REGION, "amiDistributionConfiguration": {
                "name": "x-{{ imagebuilder:nope }}"}}])
    # timeoutMinutes is the one required member of DistributionConfiguration (the model checker
    # insists on it); AWS's default is 360.
    assert 30 <= got["timeoutMinutes"] <= 720

    listed = client_a.list_distribution_configurations(filters=[{"name": "name", "values": [name]}])
    assert [s["arn"] for s in listed["distributionConfigurationSummaryList"]] == [dist]

    u = client_a.update_distribution_configuration(distributionConfigurationArn=dist, description="second",
                                                   distributions=[{"region": REGION}])
    assert u["distributionConfigurationArn"] == dist
    got = client_a.get_distribution_configuration(distributionConfigurationArn=dist)["distributionConfiguration"]
    assert got["description"] == "second"
    assert got["distributions"] == [{"region": REGION}]

    assert client_a.delete_distribution_configuration(distributionConfigurationArn=dist)[
        "distributionConfigurationArn"] == dist
    with raises("ResourceNotFoundException", 404):
        client_a.get_distribution_configuration(distributionConfigurationArn=dist)


def test_configuration_errors(client_a, account_a):
    name = unique("infra")
    create_infrastructure(client_a, name)
    with raises("ResourceAlreadyExistsException", 400, mentions=name):
        create_infrastructure(client_a, name, description="other")
    dname = unique("dist")
    create_distribution(client_a, dname)
    with raises("ResourceAlreadyExistsException", 400, mentions=dname):
        create_distribution(client_a, dname, description="other")
    # (any region name is valid: a region kiln's configuration does not name is a folder of its own)
    with raises("InvalidParameterValueException", 400, mentions="region"):
        client_a.create_distribution_configuration(name=unique("dist"), distributions=[{"region": "not a name!"}])
    with raises("InvalidParameterValueException", 400, mentions="distributions"):
        client_a.create_distribution_configuration(name=unique("dist"), distributions=[])
    with raises("ResourceNotFoundException", 404):
        client_a.update_distribution_configuration(
            distributionConfigurationArn=arn(account_a, "distribution-configuration", unique("no")),
            distributions=[{"region": REGION}])


def test_through_the_aws_cli(aws, account_a):
    name = unique("infra")
    made = aws("imagebuilder", "create-infrastructure-configuration", "--name", name,
               "--instance-profile-name", "kiln-builder").json
    infra = arn(account_a, "infrastructure-configuration", name)
    assert made["infrastructureConfigurationArn"] == infra
    got = aws("imagebuilder", "get-infrastructure-configuration", "--infrastructure-configuration-arn", infra).json
    assert got["infrastructureConfiguration"]["name"] == name
    aws("imagebuilder", "delete-infrastructure-configuration", "--infrastructure-configuration-arn", infra)


def test_untrusted_components_through_the_api(client_a, account_a):
    """kiln's `untrustedComponents` is the tag `kiln:untrustedComponents` through the API (the
    model has no member for it). The suite's server lets untrusted components run in sandboxes
    (`trust.untrustedComponents: sandbox`); a configuration may raise that to `vm`."""
    from helpers import create_component, create_container_recipe

    tag = "kiln:untrustedComponents"
    infra = create_infrastructure(client_a, tags={tag: "vm"})
    got = client_a.get_infrastructure_configuration(infrastructureConfigurationArn=infra)["infrastructureConfiguration"]
    assert got["tags"] == {tag: "vm"}
    with raises("InvalidParameterValueException", 400, mentions=(tag, "chroot")):
        create_infrastructure(client_a, tags={tag: "chroot"})
    with raises("InvalidParameterValueException", 400, mentions=(tag, "chroot")):
        client_a.tag_resource(resourceArn=infra, tags={tag: "chroot"})
    lax = create_infrastructure(client_a, tags={tag: "sandbox"})

    # The account is no operator account: its component must run in a VM, which cannot make
    # the container recipe's image. Refused before a build is numbered, saying why.
    comp = create_component(client_a)
    recipe = create_container_recipe(client_a, [comp])
    with raises("InvalidRequestException", 400,
                mentions=("builder: vm", comp, f"owned by account {account_a.account_id}",
                          "the infrastructure's setting", "disk images only")):
        client_a.create_image(containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
                              imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})
    assert client_a.list_image_build_versions(
        imageVersionArn=recipe.replace(":container-recipe/", ":image/")).get("imageSummaryList", []) == []
    for i in (infra, lax):
        client_a.delete_infrastructure_configuration(infrastructureConfigurationArn=i)
