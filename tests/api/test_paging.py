"""Pagination of List operations: maxResults, nextToken, boto3's paginators, the AWS CLI's paging."""

import pytest

from helpers import arn, create_component, document, paginate, raises, unique

COUNT = 30


@pytest.fixture(scope="module")
def paged(new_account, client_for):
    """An account of its own holding exactly COUNT components, and its client."""
    account = new_account("api-page")
    client = client_for(account)
    made = set()
    for i in range(COUNT):
        name = f"page-{i:02d}-{unique('c')}"
        create_component(client, name, data=document(name))
        made.add(arn(account, "component", name, "1.0.0"))
    return account, client, made


def test_pages_of_seven(paged):
    account, client, made = paged
    pages = []
    nxt = None
    seen_tokens = []
    while True:
        r = client.list_components(maxResults=7, **({"nextToken": nxt} if nxt else {}))
        page = r.get("componentVersionList", [])
        assert len(page) <= 7, len(page)
        pages.append([c["arn"] for c in page])
        nxt = r.get("nextToken")
        if not nxt:
            break
        assert nxt not in seen_tokens, "nextToken came back: paging does not advance"
        seen_tokens.append(nxt)
        assert len(pages) < 100
    items = [a for p in pages for a in p]
    assert len(items) == len(set(items)), "an item was listed twice"
    assert set(items) == made
    assert len(pages) >= 5, [len(p) for p in pages]  # 30 items, at most 7 a page


def test_default_page_size_and_helper(paged):
    account, client, made = paged
    first = client.list_components()
    # Image Builder's default page is 25 items.
    assert len(first["componentVersionList"]) <= 25
    items, tokens = paginate(client.list_components, "componentVersionList", maxResults=4)
    assert sorted(c["arn"] for c in items) == sorted(made)
    assert len(tokens) >= 7


def test_boto3_paginator(paged):
    account, client, made = paged
    pages = list(client.get_paginator("list_components").paginate(PaginationConfig={"PageSize": 7}))
    items = [c["arn"] for p in pages for c in p.get("componentVersionList", [])]
    assert sorted(items) == sorted(made)


def test_max_results_out_of_range(paged, raw):
    account, client, made = paged
    # botocore checks the minimum (1) itself but not the maximum (100): 101 reaches the server.
    with raises("InvalidParameterValueException", 400, mentions="maxResults"):
        client.list_components(maxResults=101)
    for bad in (0, -1, 1000, "7", 7.5):
        a = raw("ListComponents", "POST", "/ListComponents", {"maxResults": bad}, account=account)
        assert a.status == 400, (bad, a.status, a.body)
        assert "maxResults" in (a.json.get("message") or a.json.get("Message") or ""), (bad, a.body)


def test_bad_next_token(paged):
    account, client, made = paged
    with raises("InvalidPaginationTokenException", 400):
        client.list_components(nextToken="not-a-token-kiln-gave")


def test_a_token_is_the_accounts_own(paged, client_a):
    account, client, made = paged
    token = client.list_components(maxResults=7)["nextToken"]
    # Another account's token does not page this account's list (nor leak the other's items).
    try:
        r = client_a.list_components(maxResults=7, nextToken=token)
    except Exception as e:  # InvalidPaginationTokenException is the expected answer
        assert getattr(e, "response", {}).get("Error", {}).get("Code") == "InvalidPaginationTokenException", e
    else:
        assert not set(c["arn"] for c in r.get("componentVersionList", [])) & made


def test_aws_cli_pages_through_everything(paged, aws):
    account, client, made = paged
    out = aws("imagebuilder", "list-components", "--page-size", "7", account=account).json
    assert sorted(c["arn"] for c in out["componentVersionList"]) == sorted(made)
    assert "NextToken" not in out and "nextToken" not in out

    first = aws("imagebuilder", "list-components", "--max-items", "10", "--page-size", "7", account=account).json
    assert len(first["componentVersionList"]) == 10
    assert first.get("NextToken"), first.keys()
    rest = aws("imagebuilder", "list-components", "--page-size", "7", "--starting-token", first["NextToken"],
               account=account).json
    both = [c["arn"] for c in first["componentVersionList"] + rest["componentVersionList"]]
    assert len(both) == len(set(both)) and set(both) == made
