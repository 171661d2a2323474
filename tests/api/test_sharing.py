"""Sharing between accounts (docs/sharing.md): Put/Get*Policy, `owner=Shared` lists, shared
components in the grantee's recipes and builds, read-only for the grantee, invisible to others,
revoked by a new policy."""

import json

import pytest

from helpers import (PARENT, arn, create_component, create_container_recipe, create_infrastructure, document,
                     raises, unique, wait_for_image)

NOUNS = {"component": ("Component", "Components"), "image-recipe": ("ImageRecipe", "ImageRecipes"),
         "container-recipe": ("ContainerRecipe", "ContainerRecipes"), "image": ("Image", "Images")}


def policy(*accounts, kind: str = "component", resource: str | None = None) -> str:
    one, many = NOUNS[kind]
    statement = {"Effect": "Allow", "Principal": {"AWS": [a.account_id for a in accounts]},
                 "Action": [f"imagebuilder:Get{one}", f"imagebuilder:List{many}"]}
    if resource:
        statement["Resource"] = [resource]
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def nobody() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": []})


def shared_components(client) -> list[str]:
    return [c["arn"] for c in client.list_components(owner="Shared")["componentVersionList"]]


def version_of(build_arn: str) -> str:
    return build_arn.rsplit("/", 1)[0]


def test_a_shared_component_is_listed_and_read_by_the_grantee_only(client_a, client_b, account_a, account_b,
                                                                    new_account, client_for):
    comp = create_component(client_a)
    # Before the policy, B sees nothing of it.
    with raises("ResourceNotFoundException", 404):
        client_b.get_component(componentBuildVersionArn=comp)
    assert version_of(comp) not in shared_components(client_b)

    doc = policy(account_b, resource=comp)
    assert client_a.put_component_policy(componentArn=comp, policy=doc)["componentArn"] == comp
    assert json.loads(client_a.get_component_policy(componentArn=comp)["policy"]) == json.loads(doc)

    listed = client_b.list_components(owner="Shared")["componentVersionList"]
    mine = [c for c in listed if c["arn"] == version_of(comp)]
    assert len(mine) == 1, listed
    assert mine[0]["owner"] == account_a.account_id
    builds = client_b.list_component_build_versions(componentVersionArn=version_of(comp))["componentSummaryList"]
    assert [c["arn"] for c in builds] == [comp], builds
    got = client_b.get_component(componentBuildVersionArn=comp)["component"]
    assert got["arn"] == comp and got["owner"] == account_a.account_id and "echo hello" in got["data"]
    # Not B's own.
    assert version_of(comp) not in [c["arn"] for c in client_b.list_components()["componentVersionList"]]

    # Read-only for B: the owner alone changes, deletes, tags or shares it.
    with raises("ForbiddenException", 403, mentions=(comp, "owner")):
        client_b.delete_component(componentBuildVersionArn=comp)
    with raises("ForbiddenException", 403):
        client_b.put_component_policy(componentArn=comp, policy=policy(account_b))
    with raises("ForbiddenException", 403):
        client_b.get_component_policy(componentArn=comp)
    # The model gives TagResource no ForbiddenException.
    with raises("InvalidParameterException", 400, mentions="owner"):
        client_b.tag_resource(resourceArn=comp, tags={"mine": "now"})
    with raises("InvalidParameterException", 400, mentions="owner"):
        client_b.untag_resource(resourceArn=comp, tagKeys=["x"])
    assert client_a.get_component(componentBuildVersionArn=comp)["component"]["arn"] == comp
    assert "mine" not in client_a.list_tags_for_resource(resourceArn=comp).get("tags", {})

    # A third account learns nothing: the same answers as for a component that does not exist.
    client_c = client_for(new_account("api-c"))
    with raises("ResourceNotFoundException", 404):
        client_c.get_component(componentBuildVersionArn=comp)
    with raises("ResourceNotFoundException", 404):
        client_c.delete_component(componentBuildVersionArn=comp)
    with raises("ResourceNotFoundException", 404):
        client_c.put_component_policy(componentArn=comp, policy=policy(account_b))
    with raises("ResourceNotFoundException", 404):
        client_c.get_component_policy(componentArn=comp)
    with raises("ResourceNotFoundException", 404):
        client_c.tag_resource(resourceArn=comp, tags={"a": "b"})
    assert version_of(comp) not in shared_components(client_c)
    assert client_c.list_component_build_versions(
        componentVersionArn=version_of(comp)).get("componentSummaryList", []) == []

    # A new policy replaces the old one: revoked, B sees nothing again.
    client_a.put_component_policy(componentArn=comp, policy=nobody())
    assert json.loads(client_a.get_component_policy(componentArn=comp)["policy"])["Statement"] == []
    assert version_of(comp) not in shared_components(client_b)
    with raises("ResourceNotFoundException", 404):
        client_b.get_component(componentBuildVersionArn=comp)
    with raises("ResourceNotFoundException", 404):
        client_b.delete_component(componentBuildVersionArn=comp)


def test_bad_policies_are_refused_naming_the_field(client_a, account_a, account_b):
    comp = create_component(client_a)
    with raises("ResourceNotFoundException", 404, mentions="no policy"):
        client_a.get_component_policy(componentArn=comp)
    b = account_b.account_id
    cases = [
        ("{not json", "not JSON"),
        (json.dumps({"Version": "2012-10-17"}), "Statement"),
        (json.dumps({"Statement": [{"Effect": "Deny", "Principal": {"AWS": b},
                                    "Action": "imagebuilder:GetComponent"}]}), "Statement[0].Effect"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*",
                                    "Action": "imagebuilder:GetComponent"}]}), "Statement[0].Principal"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ["12345"]},
                                    "Action": "imagebuilder:GetComponent"}]}), "Statement[0].Principal.AWS[0]"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": b},
                                    "Action": ["imagebuilder:GetComponent", "imagebuilder:DeleteComponent"]}]}),
         "Statement[0].Action[1]"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": b},
                                    "Action": "imagebuilder:GetImage"}]}), "imagebuilder:GetComponent"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": b},
                                    "Action": "imagebuilder:GetComponent",
                                    "Resource": arn(account_a, "component", "other", "1.0.0", "1")}]}),
         "Statement[0].Resource"),
        (json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": b},
                                    "Action": "imagebuilder:GetComponent", "Condition": {}}]}),
         "Statement[0].Condition"),
    ]
    for doc, field in cases:
        with raises("InvalidParameterValueException", 400, mentions=("policy", field)):
            client_a.put_component_policy(componentArn=comp, policy=doc)
    with raises("ResourceNotFoundException", 404):
        client_a.get_component_policy(componentArn=comp)
    # A policy is put on one build of a component.
    with raises("InvalidParameterValueException", 400, mentions="componentArn"):
        client_a.put_component_policy(componentArn=version_of(comp) + "/x", policy=policy(account_b))
    with raises("ResourceNotFoundException", 404):
        client_a.put_component_policy(componentArn=arn(account_a, "component", unique("no"), "1.0.0", "1"),
                                      policy=policy(account_b))


def test_recipe_policies_share_recipes(client_a, client_b, account_a, account_b):
    comp = create_component(client_a)
    ctr = create_container_recipe(client_a, [comp])
    img = client_a.create_image_recipe(name=unique("img"), semanticVersion="1.0.0", parentImage=PARENT,
                                       components=[{"componentArn": comp}])["imageRecipeArn"]
    doc = policy(account_b, kind="container-recipe")
    assert client_a.put_container_recipe_policy(containerRecipeArn=ctr, policy=doc)["containerRecipeArn"] == ctr
    assert client_a.get_container_recipe_policy(containerRecipeArn=ctr)["policy"] == doc
    client_a.put_image_recipe_policy(imageRecipeArn=img, policy=policy(account_b, kind="image-recipe"))
    with raises("InvalidParameterValueException", 400, mentions="imagebuilder:GetImageRecipe"):
        client_a.put_image_recipe_policy(imageRecipeArn=img, policy=policy(account_b))

    listed = client_b.list_container_recipes(owner="Shared")["containerRecipeSummaryList"]
    assert [r["arn"] for r in listed if r["arn"] == ctr] == [ctr]
    assert client_b.get_container_recipe(containerRecipeArn=ctr)["containerRecipe"]["owner"] == account_a.account_id
    assert img in [r["arn"] for r in client_b.list_image_recipes(owner="Shared")["imageRecipeSummaryList"]]
    assert client_b.get_image_recipe(imageRecipeArn=img)["imageRecipe"]["arn"] == img
    with raises("ForbiddenException", 403):
        client_b.get_image_recipe_policy(imageRecipeArn=img)
    with raises("ForbiddenException", 403):
        client_b.delete_container_recipe(containerRecipeArn=ctr)
    # B's pipeline may name the shared recipe (with B's own infrastructure).
    pipe = client_b.create_image_pipeline(name=unique("pipe"), containerRecipeArn=ctr,
                                          infrastructureConfigurationArn=create_infrastructure(client_b),
                                          status="DISABLED")["imagePipelineArn"]
    assert client_b.get_image_pipeline(imagePipelineArn=pipe)["imagePipeline"]["containerRecipeArn"] == ctr
    # The recipe is shared, not its component: A shares that separately.
    with raises("ResourceNotFoundException", 404):
        client_b.get_component(componentBuildVersionArn=comp)


@pytest.mark.build
def test_the_grantee_builds_with_a_shared_component_until_it_is_revoked(client_a, client_b, account_a, account_b,
                                                                       new_account, client_for):
    mark = unique("shared")
    comp = create_component(client_a, data=document("shared", build=f"echo {mark} > /shared-mark"))
    # Unshared, B's recipe cannot name it.
    with raises("ResourceNotFoundException", 404, mentions=comp):
        create_container_recipe(client_b, [comp])
    client_a.put_component_policy(componentArn=comp, policy=policy(account_b))
    recipe = create_container_recipe(client_b, [comp])
    assert client_b.get_container_recipe(containerRecipeArn=recipe)["containerRecipe"]["components"][0][
        "componentArn"] == comp
    infra = create_infrastructure(client_b)
    image_arn = client_b.create_image(
        containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
        imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})["imageBuildVersionArn"]
    assert image_arn.startswith(arn(account_b, "image", ""))
    image, states = wait_for_image(client_b, image_arn, timeout=600)
    assert states[-1] == "AVAILABLE", (states, image.get("state"))

    # B shares the image it built with A: A reads it and may take it as a parent, not change it.
    client_b.put_image_policy(imageArn=image_arn, policy=policy(account_a, kind="image"))
    assert client_a.get_image(imageBuildVersionArn=image_arn)["image"]["arn"] == image_arn
    shared = client_a.list_images(owner="Shared")["imageVersionList"]
    assert version_of(image_arn) in [i["arn"] for i in shared], shared
    builds = client_a.list_image_build_versions(imageVersionArn=version_of(image_arn))["imageSummaryList"]
    assert [b["arn"] for b in builds] == [image_arn]
    with raises("ForbiddenException", 403):
        client_a.delete_image(imageBuildVersionArn=image_arn)
    with raises("ForbiddenException", 403):
        client_a.cancel_image_creation(imageBuildVersionArn=image_arn)
    with raises("InvalidParameterException", 400):
        client_a.tag_resource(resourceArn=image_arn, tags={"a": "b"})
    r = client_a.create_container_recipe(
        containerType="DOCKER", name=unique("child"), semanticVersion="1.0.0", parentImage=image_arn,
        components=[{"componentArn": create_component(client_a)}],
        targetRepository={"service": "ECR", "repositoryName": unique("child")})
    child = client_a.create_image(
        containerRecipeArn=r["containerRecipeArn"], infrastructureConfigurationArn=create_infrastructure(client_a),
        imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})["imageBuildVersionArn"]
    image, states = wait_for_image(client_a, child, timeout=600)
    assert states[-1] == "AVAILABLE", (states, image.get("state"))
    client_c = client_for(new_account("api-c"))
    with raises("ResourceNotFoundException", 404):
        client_c.get_image(imageBuildVersionArn=image_arn)
    with raises("ResourceNotFoundException", 404, mentions="parentImage"):
        client_c.create_container_recipe(
            containerType="DOCKER", name=unique("child"), semanticVersion="1.0.0", parentImage=image_arn,
            components=[{"componentArn": create_component(client_c)}],
            targetRepository={"service": "ECR", "repositoryName": unique("child")})

    # A revokes the component: B's next build is refused before it gets a number, naming it.
    client_a.put_component_policy(componentArn=comp, policy=nobody())
    with raises("InvalidRequestException", 400, mentions=(comp, "no component matches")):
        client_b.create_image(containerRecipeArn=recipe, infrastructureConfigurationArn=infra,
                              imageTestsConfiguration={"imageTestsEnabled": False, "timeoutMinutes": 60})
    builds = client_b.list_image_build_versions(imageVersionArn=version_of(image_arn))["imageSummaryList"]
    assert [b["arn"] for b in builds] == [image_arn], "the refused build was numbered"
    # B's recipe naming it does not keep A from deleting its component, nor is A told of it.
    assert client_a.delete_component(componentBuildVersionArn=comp)["componentBuildVersionArn"] == comp
