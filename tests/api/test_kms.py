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
