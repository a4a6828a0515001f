"""`/v1/auth`: forward auth for gateways (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`).

The gateway asks keystile about each client request by forwarding its headers here; keystile answers 200 with who
the key is, which the gateway passes on to its upstream, or the refusal `keystile.fastapi` would give, which the
gateway passes back to the client. Configurations that the test suite runs are in docs/GATEWAYS.md.

The key is read from `X-API-Key` only, whatever KEYSTILE_ACCEPT_QUERY_KEY says: the query string here is the gateway's
(`?scopes=`), and Caddy passes the client's own query string on to a `forward_auth` URI that has none.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from keystile.asgi import HEADER_NAME, Refusal, check_request, rate_limit_fields
from keystile.fastapi import http_exception
from keystile.instance import keystile_of
from keystile.responses import API_KEY_ANSWERS

router = APIRouter(prefix="/v1", tags=["gateways"])

KEY_ID_HEADER = "X-Keystile-Key-Id"
OWNER_ID_HEADER = "X-Keystile-Owner-Id"
SCOPES_HEADER = "X-Keystile-Scopes"

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_KEY_FIELD = HEADER_NAME.lower()

# check_request's answer to a request without the header when query keys are off; its wording with query keys on
# ("or query ?api_key=") would be wrong here, where the query is never read.
HEADER_REQUIRED = Refusal(401, f"API key required (header {HEADER_NAME})", {"WWW-Authenticate": "APIKey"})

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A valid key: who it is, for the gateway to pass to its upstream. No body.",
        "headers": {
            KEY_ID_HEADER: {"description": "The key's integer id", "schema": {"type": "integer"}},
            OWNER_ID_HEADER: {"description": "The integer id of the key's owner", "schema": {"type": "integer"}},
            SCOPES_HEADER: {
                "description": "The key's scopes, space separated, sorted; empty for a key without scopes",
                "schema": {"type": "string"},
            },
            "RateLimit-Policy": {"description": "The key's rate limit policy", "schema": {"type": "string"}},
            "RateLimit": {"description": "Where the key stands in its window", "schema": {"type": "string"}},
        },
    },
    **API_KEY_ANSWERS,  # the dependency's refusals, none with an X-Keystile-* field
}


def required_scopes(values: list[str]) -> list[str]:
    """`?scopes=a,b` as a list in the order given, blanks dropped.

    Repeated parameters add up rather than the last one winning: should a client's own `scopes=` ever reach here
    beside the gateway's, it can only make the check stricter.
    """
    return [scope for value in values for scope in (part.strip() for part in value.split(",")) if scope]


async def forward_auth(
    request: Request,
    scopes: Annotated[
        list[str],
        Query(
            default_factory=list,
            description="Scopes the key must hold, comma separated (`a,b`); a 403 names the first one missing",
        ),
    ],
) -> Response:
    """200 with the key's identity, or the refusal `keystile.fastapi` raises for the same request."""
    if not request.headers.get(_KEY_FIELD):
        raise http_exception(HEADER_REQUIRED)
    # check_request would read `?api_key=` where query keys are enabled; here the query is never a key's source.
    scope = {**request.scope, "query_string": b""}
    checked = await check_request(keystile_of(request), scope, required_scopes(scopes))
    if isinstance(checked, Refusal):
        raise http_exception(checked)
    key = checked.key
    assert key is not None  # a VALID verification always carries its key
    response = Response(
        headers={
            KEY_ID_HEADER: str(key.id),
            OWNER_ID_HEADER: str(key.user_id),
            SCOPES_HEADER: " ".join(sorted(key.scopes)),
        }
    )
    response.raw_headers.extend(rate_limit_fields(checked))
    return response


# One route per method rather than one `api_route` for all: each operation needs its own OpenAPI operation id.
for _method in _METHODS:
    router.add_api_route(
        "/auth",
        forward_auth,
        methods=[_method],
        operation_id=f"forward_auth_{_method.lower()}",
        summary="Forward auth for gateways",
        description=(
            "For nginx `auth_request`, Caddy `forward_auth` and Traefik `ForwardAuth` (docs/GATEWAYS.md). The "
            "gateway forwards the client's request headers; the key is read from `X-API-Key` only, never from the "
            "query string. 200 carries the key's identity in `X-Keystile-*` fields and its RateLimit fields; "
            "refusals are those of `keystile.fastapi`. Counts as a use of the key, like any verification."
        ),
        response_class=Response,
        responses=_RESPONSES,
        openapi_extra={"security": [{"APIKeyHeader": []}]},
    )
