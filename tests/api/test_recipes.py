"""Image recipes and container recipes: create, get, list, delete; versions; dependencies."""

from helpers import PARENT, arn, create_component, create_container_recipe, raises, unique


def test_container_recipe(client_a, account_a):
    comp = create_component(client_a)
    name = unique("ctr")
    r = client_a.create_container_recipe(
        containerType="DOCKER", name=name, semanticVersion="1.0.0", parentImage=PARENT,
        components=[{"componentArn": comp}], description="container recipe of the API tests",
        targetRepository={"service": "ECR", "repositoryName": name}, workingDirectory="/tmp")
    recipe_arn = r["containerRecipeArn"]
    assert recipe_arn == arn(account_a, "container-recipe", name, "1.0.0")

    got = client_a.get_container_recipe(containerRecipeArn=recipe_arn)["containerRecipe"]
    assert got["arn"] == recipe_arn
    assert got["name"] == name and got["version"] == "1.0.0"
    assert got["containerType"] == "DOCKER"
    assert got["parentImage"] == PARENT
    assert [c["componentArn"] for c in got["components"]] == [comp]
    assert got["targetRepository"] == {"service": "ECR", "repositoryName": name}
    assert got["description"] == "container recipe of the API tests"
    assert got.get("workingDirectory", "/tmp") == "/tmp"

    listed = client_a.list_container_recipes(filters=[{"name": "name", "values": [name]}])
    assert [s["arn"] for s in listed["containerRecipeSummaryList"]] == [recipe_arn]

    assert client_a.delete_container_recipe(containerRecipeArn=recipe_arn)["containerRecipeArn"] == recipe_arn
    with raises("ResourceNotFoundException", 404):
        client_a.get_container_recipe(containerRecipeArn=recipe_arn)


def test_image_recipe(client_a, account_a):
    comp = create_component(client_a)
    name = unique("img")
    r = client_a.create_image_recipe(name=name, semanticVersion="1.2.3", parentImage=PARENT,
                                     components=[{"componentArn": comp}])
    recipe_arn = r["imageRecipeArn"]
    assert recipe_arn == arn(account_a, "image-recipe", name, "1.2.3")
    got = client_a.get_image_recipe(imageRecipeArn=recipe_arn)["imageRecipe"]
    assert got["arn"] == recipe_arn and got["parentImage"] == PARENT
    assert [c["componentArn"] for c in got["components"]] == [comp]
    listed = client_a.list_image_recipes(filters=[{"name": "name", "values": [name]}])
    assert [s["arn"] for s in listed["imageRecipeSummaryList"]] == [recipe_arn]
    assert client_a.delete_image_recipe(imageRecipeArn=recipe_arn)["imageRecipeArn"] == recipe_arn
    with raises("ResourceNotFoundException", 404):
        client_a.get_image_recipe(imageRecipeArn=recipe_arn)


def test_component_in_use_cannot_be_deleted(client_a):
    comp = create_component(client_a)
    recipe = create_container_recipe(client_a, [comp])
    with raises("ResourceDependencyException", 400):
        client_a.delete_component(componentBuildVersionArn=comp)
    # Still there, and deletable once nothing uses it.
    client_a.get_component(componentBuildVersionArn=comp)
    client_a.delete_container_recipe(containerRecipeArn=recipe)
    client_a.delete_component(componentBuildVersionArn=comp)


def test_same_recipe_version_twice(client_a):
    comp = create_component(client_a)
    name = unique("ctr")
    create_container_recipe(client_a, [comp], name=name)
    with raises("ResourceAlreadyExistsException", 400, mentions=name):
        create_container_recipe(client_a, [comp], name=name, description="other content")


def test_recipe_errors(client_a, account_a):
    comp = create_component(client_a)
    with raises("InvalidVersionNumberException", 400):
        create_container_recipe(client_a, [comp], version="1.0")
    missing = arn(account_a, "component", unique("nothing"), "1.0.0", "1")
    # A component that does not exist: the recipe is refused (AWS answers 404 for it).
    with raises("ResourceNotFoundException", 404):
        create_container_recipe(client_a, [missing])
    with raises("InvalidParameterValueException", 400, mentions="parentImage"):
        client_a.create_container_recipe(
            containerType="DOCKER", name=unique("ctr"), semanticVersion="1.0.0", parentImage="nowhere:at/all",
            components=[{"componentArn": comp}], targetRepository={"service": "ECR", "repositoryName": "x-y-z"})
    with raises("ResourceNotFoundException", 404):
        client_a.get_container_recipe(containerRecipeArn=arn(account_a, "container-recipe", unique("no"), "1.0.0"))


def test_dry_run_checks_and_makes_nothing(client_a):
    comp = create_component(client_a)
    name = unique("dry")
    with raises("DryRunOperationException", 412):
        create_container_recipe(client_a, [comp], name=name, dryRun=True)
    listed = client_a.list_container_recipes()["containerRecipeSummaryList"]
    assert name not in [r["name"] for r in listed]
    # A dry run of a bad request answers what is wrong with it.
    with raises("InvalidVersionNumberException", 400):
        create_container_recipe(client_a, [comp], version="1.0", dryRun=True)


def test_an_ami_id_is_refused_clearly(client_a):
    comp = create_component(client_a)
    with raises("InvalidParameterValueException", 400, mentions=("parentImage", "AMI")):
        client_a.create_image_recipe(name=unique("ami"), semanticVersion="1.0.0",
                                     parentImage="ami-0123456789abcdef0",
                                     components=[{"componentArn": comp}])


def test_aws_managed_components_by_their_arns(client_a):
    listed = client_a.list_components(owner="Amazon")["componentVersionList"]
    names = {c["name"] for c in listed}
    assert {"update-linux", "reboot-linux", "reboot-test-linux", "simple-boot-test-linux",
            "hello-world-linux"} <= names, names
    assert all(c["owner"] == "Amazon" for c in listed)
    update = "arn:aws:imagebuilder:us-east-1:aws:component/update-linux/x.x.x"
    got = client_a.get_component(componentBuildVersionArn="arn:aws:imagebuilder:us-east-1:aws:component/update-linux/1.0.0/1")
    assert "apt-get" in got["component"]["data"]
    recipe = client_a.create_image_recipe(name=unique("upd"), semanticVersion="1.0.0",
                                          parentImage=PARENT, components=[{"componentArn": update}])
    r = client_a.get_image_recipe(imageRecipeArn=recipe["imageRecipeArn"])["imageRecipe"]
    assert r["components"][0]["componentArn"].endswith("component/update-linux/x.x.x")


def test_the_standard_dockerfile_template_is_taken_and_instructions_refused(client_a):
    comp = create_component(client_a)
    standard = ("FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n"
                "{{{ imagebuilder:components }}}\n")
    create_container_recipe(client_a, [comp], dockerfileTemplateData=standard)
    with raises("InvalidParameterValueException", 400,
                mentions=("dockerfileTemplateData", "line 2", "RUN apt-get install -y curl")):
        create_container_recipe(client_a, [comp], dockerfileTemplateData=standard.replace(
            "\n", "\nRUN apt-get install -y curl\n", 1))
