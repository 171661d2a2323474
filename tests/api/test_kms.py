"""KMS keys in container recipes: `kmsKeyId` names a key of kiln's local KMS (`kiln key`);
an unknown, disabled or another account's key is refused with InvalidParameterValueException
at the field, a granted one is taken, and GetContainerRecipe shows the key back."""

from helpers import create_component, create_container_recipe, raises


def _key(kiln, account) -> str:
    out = kiln.json("key", "create", "--account", account.account_id, "--description", "api", "-o", "json")
    return out["arn"]


def test_container_recipe_kms_key(kiln, client_a, client_b, account_a, account_b):
    key = _key(kiln, account_a)
    comp = create_component(client_a)
    recipe = create_container_recipe(client_a, [comp], kmsKeyId=key)
    got = client_a.get_container_recipe(containerRecipeArn=recipe)["containerRecipe"]
    assert got.get("kmsKeyId") == key

    with raises("InvalidParameterValueException", 400, mentions=("kmsKeyId", "no KMS key")):
        create_container_recipe(client_a, [comp], kmsKeyId="00000000-0000-4000-8000-000000000000")
    with raises("InvalidParameterValueException", 400, mentions=("kmsKeyId", "not a KMS key reference")):
        create_container_recipe(client_a, [comp], kmsKeyId="alias/golden")

    # Account B may not use A's key until A grants it.
    comp_b = create_component(client_b)
    with raises("InvalidParameterValueException", 400, mentions=("may not use", account_b.account_id)):
        create_container_recipe(client_b, [comp_b], kmsKeyId=key)
    kiln.run("key", "grant", key, account_b.account_id, "--account", account_a.account_id)
    create_container_recipe(client_b, [comp_b], kmsKeyId=key)

    # A disabled key encrypts nothing new: refused to both.
    kiln.run("key", "disable", key, "--account", account_a.account_id)
    with raises("InvalidParameterValueException", 400, mentions="is disabled"):
        create_container_recipe(client_a, [comp], kmsKeyId=key)
    kiln.run("key", "enable", key, "--account", account_a.account_id)


def test_key_operations_through_the_server(raw, account_a, account_b, client_b):
    """kiln's own /kiln/ key operations act as the signed account: A makes a key, B cannot see or
    change it until A grants it, and a key B was granted is one its recipe may name."""
    made = raw(None, "PUT", "/kiln/CreateKey", {"description": "through the API"}, account=account_a)
    assert made.status == 200, made.body
    key = made.json["key"]
    assert key["accountId"] == account_a.account_id and key["keyState"] == "Enabled"
    assert key["keyArn"].startswith(f"arn:kiln:kms:local:{account_a.account_id}:key/")
    assert "secret" not in made.body.decode().lower()

    listed = raw(None, "POST", "/kiln/ListKeys", {}, account=account_a).json["keys"]
    assert key["keyArn"] in [k["keyArn"] for k in listed]
    assert raw(None, "GET", "/kiln/DescribeKey", query={"keyId": key["keyId"]}, account=account_b).status == 404
    refused = raw(None, "PUT", "/kiln/DisableKey", {"keyId": key["keyArn"]}, account=account_b)
    assert refused.status == 403 and "only the owner" in refused.json["message"], refused.body
    assert raw(None, "PUT", "/kiln/CreateGrant", {"keyId": key["keyId"]}, account=account_a).status == 400

    granted = raw(None, "PUT", "/kiln/CreateGrant",
                  {"keyId": key["keyId"], "granteeAccount": account_b.account_id}, account=account_a)
    assert granted.json["key"]["grants"] == [account_b.account_id]
    comp = create_component(client_b)
    create_container_recipe(client_b, [comp], kmsKeyId=key["keyArn"])

    off = raw(None, "PUT", "/kiln/DisableKey", {"keyId": key["keyId"]}, account=account_a)
    assert off.json["key"]["keyState"] == "Disabled"
    with raises("InvalidParameterValueException", 400, mentions="is disabled"):
        create_container_recipe(client_b, [comp], kmsKeyId=key["keyArn"])
    raw(None, "PUT", "/kiln/EnableKey", {"keyId": key["keyId"]}, account=account_a)
    raw(None, "PUT", "/kiln/RevokeGrant",
        {"keyId": key["keyId"], "granteeAccount": account_b.account_id}, account=account_a)
    with raises("InvalidParameterValueException", 400, mentions="may not use"):
        create_container_recipe(client_b, [comp], kmsKeyId=key["keyArn"])
