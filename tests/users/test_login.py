from __future__ import annotations

import base64
import json
import warnings
from datetime import timedelta
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from tests.conftest import TEST_SECRET_KEY, MakeClient
from tests.helpers import PASSWORD, KeystileClient, login, register

OTHER_SECRET_KEY = "another-secret-key-that-is-long-enough-0123456789"


async def post_login(client: KeystileClient, email: str, password: str) -> Any:
    return await client.post("/auth/token", data={"username": email, "password": password})


async def login_failures(client: KeystileClient) -> list[AuditEvent]:
    async with client.keystile.session_factory() as session:
        query = select(AuditEvent).where(AuditEvent.action == "user.login_failed").order_by(AuditEvent.id)
        return list((await session.scalars(query)).all())


def claims_for(user_id: int, clock: FakeClock, ttl: int = 900) -> dict[str, Any]:
    now = clock()
    return {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(seconds=ttl),
        "iss": "keystile",
        "aud": "keystile",
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_login_returns_a_bearer_token_with_its_lifetime(client: KeystileClient) -> None:
    await register(client)

    response = await post_login(client, "alice@example.com", PASSWORD)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert await login_failures(client) == []


async def test_a_token_response_is_never_stored_by_a_cache(client: KeystileClient) -> None:
    await register(client)

    response = await post_login(client, "alice@example.com", PASSWORD)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


async def test_login_accepts_the_email_in_another_case(client: KeystileClient) -> None:
    await register(client)

    response = await post_login(client, "ALICE@Example.com", PASSWORD)

    assert response.status_code == 200


async def test_token_claims_name_keystile_the_user_and_the_configured_ttl(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(jwt_ttl_seconds=120)
    user = await register(client)

    response = await post_login(client, "alice@example.com", PASSWORD)

    assert response.json()["expires_in"] == 120
    token = response.json()["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(
        token, TEST_SECRET_KEY, algorithms=["HS256"], audience="keystile", options={"verify_exp": False}
    )
    assert claims["iss"] == "keystile"
    assert claims["aud"] == "keystile"
    assert claims["sub"] == str(user["id"])
    assert claims["iat"] == int(clock().timestamp())
    assert claims["exp"] - claims["iat"] == 120


async def test_wrong_password_and_unknown_email_get_the_same_401(client: KeystileClient) -> None:
    await register(client)

    wrong_password = await post_login(client, "alice@example.com", "not the password")
    unknown_email = await post_login(client, "nobody@example.com", PASSWORD)

    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json() == {"detail": "Incorrect email or password"}
    assert wrong_password.headers["WWW-Authenticate"] == unknown_email.headers["WWW-Authenticate"] == "Bearer"


async def test_a_failed_login_for_an_existing_email_is_audited_with_the_account_as_actor(
    client: KeystileClient, clock: FakeClock
) -> None:
    user = await register(client)

    await post_login(client, "alice@example.com", "not the password")

    [event] = await login_failures(client)
    assert event.actor_id == user["id"]
    assert event.api_key_id is None
    assert event.at == clock()


async def test_a_failed_login_for_an_unknown_email_is_audited_without_an_actor(client: KeystileClient) -> None:
    await register(client)

    await post_login(client, "nobody@example.com", PASSWORD)

    [event] = await login_failures(client)
    assert event.actor_id is None
    assert event.api_key_id is None


async def test_the_failure_audit_never_records_the_attempted_password(client: KeystileClient) -> None:
    await register(client)

    await post_login(client, "alice@example.com", "attempted-password-xyz")

    [event] = await login_failures(client)
    assert "attempted-password-xyz" not in json.dumps(event.detail)


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"username": "alice@example.com"}, id="missing-password"),
        pytest.param({"password": PASSWORD}, id="missing-username"),
        pytest.param({}, id="empty-form"),
    ],
)
async def test_an_incomplete_login_form_is_422_and_not_counted_as_a_failure(
    client: KeystileClient, form: dict[str, str]
) -> None:
    await register(client)

    response = await client.post("/auth/token", data=form)

    assert response.status_code == 422
    assert await login_failures(client) == []


async def test_login_with_a_json_body_instead_of_a_form_is_422(client: KeystileClient) -> None:
    await register(client)

    response = await client.post("/auth/token", json={"username": "alice@example.com", "password": PASSWORD})

    assert response.status_code == 422


async def test_users_me_returns_the_user_of_the_token(client: KeystileClient) -> None:
    user = await register(client)
    headers = await login(client)

    response = await client.get("/users/me", headers=headers)

    assert response.status_code == 200
    assert response.json() == user


async def test_users_me_without_a_token_is_401(client: KeystileClient) -> None:
    response = await client.get("/users/me")

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_token_is_accepted_until_its_ttl_and_rejected_once_it_has_passed(
    client: KeystileClient, clock: FakeClock
) -> None:
    await register(client)
    headers = await login(client)

    clock.advance(900 - 1)
    assert (await client.get("/users/me", headers=headers)).status_code == 200

    clock.advance(1)
    response = await client.get("/users/me", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


async def test_a_token_expires_after_the_configured_ttl(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(jwt_ttl_seconds=60)
    await register(client)
    headers = await login(client)

    clock.advance(61)

    assert (await client.get("/users/me", headers=headers)).status_code == 401


async def test_a_correctly_signed_token_is_accepted_on_users_me(client: KeystileClient, clock: FakeClock) -> None:
    # The control for the forged tokens below: the same construction with the server's key works.
    user = await register(client)
    token = jwt.encode(claims_for(user["id"], clock), TEST_SECRET_KEY, algorithm="HS256")

    response = await client.get("/users/me", headers=bearer(token))

    assert response.status_code == 200
    assert response.json()["id"] == user["id"]


def _forged_tokens() -> list[Any]:
    def signed(key: str = TEST_SECRET_KEY, algorithm: str = "HS256", drop: str | None = None, **changes: Any) -> Any:
        def build(user_id: int, clock: FakeClock) -> str:
            claims = claims_for(user_id, clock) | changes
            if drop is not None:
                del claims[drop]
            with warnings.catch_warnings():
                # The server's key is long enough for HS256, not for HS384/512; the token is meant to fail anyway.
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                return jwt.encode(claims, key, algorithm=algorithm)

        return build

    def unsigned(user_id: int, clock: FakeClock) -> str:
        return jwt.encode(claims_for(user_id, clock), None, algorithm="none")

    def unsigned_claiming_hs256(user_id: int, clock: FakeClock) -> str:
        payload = {key: value for key, value in claims_for(user_id, clock).items() if key not in ("iat", "exp")}
        payload |= {"iat": int(clock().timestamp()), "exp": int(clock().timestamp()) + 900}
        return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}."

    def tampered_subject(user_id: int, clock: FakeClock) -> str:
        header, _, signature = jwt.encode(claims_for(user_id, clock), TEST_SECRET_KEY, algorithm="HS256").split(".")
        payload = claims_for(user_id + 1, clock)
        payload |= {"iat": int(clock().timestamp()), "exp": int(clock().timestamp()) + 900}
        return f"{header}.{b64(payload)}.{signature}"

    return [
        pytest.param(signed(key=OTHER_SECRET_KEY), id="another-key"),
        pytest.param(unsigned, id="alg-none"),
        pytest.param(unsigned_claiming_hs256, id="no-signature"),
        pytest.param(tampered_subject, id="payload-swapped-under-a-valid-signature"),
        pytest.param(signed(algorithm="HS512"), id="hs512-with-the-right-key"),
        pytest.param(signed(algorithm="HS384"), id="hs384-with-the-right-key"),
        pytest.param(signed(drop="sub"), id="missing-sub"),
        pytest.param(signed(drop="exp"), id="missing-exp"),
        pytest.param(signed(drop="iat"), id="missing-iat"),
        pytest.param(signed(drop="iss"), id="missing-iss"),
        pytest.param(signed(drop="aud"), id="missing-aud"),
        pytest.param(signed(iss="someone-else"), id="wrong-iss"),
        pytest.param(signed(aud="someone-else"), id="wrong-aud"),
        pytest.param(signed(aud=["other"]), id="aud-list-without-keystile"),
        pytest.param(signed(sub="not-a-number"), id="non-numeric-sub"),
        pytest.param(signed(sub="999999"), id="sub-of-no-user"),
        pytest.param(signed(sub="-1"), id="negative-sub"),
        pytest.param(signed(sub="9223372036854775808"), id="sub-past-64-bits"),
        pytest.param(signed(sub="1" + "0" * 30), id="sub-of-31-digits"),
        pytest.param(signed(sub="2147483648"), id="sub-past-the-id-range"),
        pytest.param(signed(sub="²"), id="superscript-digit-sub"),
        pytest.param(signed(sub=" 1"), id="sub-with-a-space"),
        pytest.param(signed(exp="tomorrow"), id="exp-not-a-number"),
    ]


@pytest.mark.parametrize("make_token", _forged_tokens())
async def test_a_forged_or_incomplete_token_is_401(client: KeystileClient, clock: FakeClock, make_token: Any) -> None:
    user = await register(client)
    token = make_token(user["id"], clock)

    response = await client.get("/users/me", headers=bearer(token))

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda user_id: "0" + str(user_id), id="leading-zero"),
        pytest.param(
            lambda user_id: str(user_id).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")), id="arabic-indic"
        ),
        pytest.param(
            lambda user_id: str(user_id).translate(str.maketrans("0123456789", "０１２３４５６７８９")), id="full-width"
        ),
    ],
)
async def test_a_signed_token_naming_a_real_user_in_a_non_canonical_spelling_is_401(
    client: KeystileClient, clock: FakeClock, spelling: Any
) -> None:
    user = await register(client)
    token = jwt.encode(
        claims_for(user["id"], clock) | {"sub": spelling(user["id"])}, TEST_SECRET_KEY, algorithm="HS256"
    )

    response = await client.get("/users/me", headers=bearer(token))

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


async def test_a_token_expired_by_its_exp_claim_is_401(client: KeystileClient, clock: FakeClock) -> None:
    user = await register(client)
    claims = claims_for(user["id"], clock) | {"iat": clock() - timedelta(hours=2), "exp": clock() - timedelta(hours=1)}
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")

    assert (await client.get("/users/me", headers=bearer(token))).status_code == 401


async def test_a_token_issued_in_the_future_is_401(client: KeystileClient, clock: FakeClock) -> None:
    user = await register(client)
    claims = claims_for(user["id"], clock) | {"iat": clock() + timedelta(hours=1), "exp": clock() + timedelta(hours=2)}
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")

    assert (await client.get("/users/me", headers=bearer(token))).status_code == 401


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="word"),
        pytest.param("a.b.c", id="three-dots"),
        pytest.param("...", id="only-dots"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9", id="header-only"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9.e30", id="two-segments"),
        pytest.param("x" * 8000, id="long"),
        pytest.param("ks_4fZq8Lr2Xy0B_" + "A" * 49, id="an-api-key-shape"),
    ],
)
async def test_a_garbage_bearer_token_is_401(client: KeystileClient, token: str) -> None:
    await register(client)

    response = await client.get("/users/me", headers=bearer(token))

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="scheme-and-space"),
        pytest.param("Basic YWxpY2U6cGFzcw==", id="basic-scheme"),
        pytest.param("Token abc", id="unknown-scheme"),
    ],
)
async def test_an_authorization_header_without_a_bearer_token_is_401(
    client: KeystileClient, authorization: str
) -> None:
    response = await client.get("/users/me", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


async def test_a_token_signed_by_another_deployment_is_rejected(make_client: MakeClient) -> None:
    issuer = await make_client(secret_key=OTHER_SECRET_KEY)
    await register(issuer)
    headers = await login(issuer)
    other = await make_client()

    response = await other.get("/users/me", headers=headers)

    assert response.status_code == 401
