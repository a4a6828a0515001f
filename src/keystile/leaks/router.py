"""`POST /v1/leaks` (generic reports) and `POST /v1/leaks/github` (GitHub secret scanning partner alerts)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from keystile.callers import CallerCheck
from keystile.deps import ClientIP, KeysDep, KeystileDep, ip_text
from keystile.instance import Keystile
from keystile.keys.format import key_hashers
from keystile.leaks import github
from keystile.leaks.service import Label, LeakIntake
from keystile.responses import DETAIL_BODY, challenge

router = APIRouter(prefix="/v1/leaks", tags=["leaks"])

REPORT_SCOPE = "leaks:report"
MAX_REPORTED = 100

REPORTER = CallerCheck(REPORT_SCOPE, forbidden="Not an admin, and no key with scope `leaks:report`")
"""The reporting account: the owner of a key holding `leaks:report`, or an admin with a bearer token."""


class LeakReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(min_length=1, max_length=MAX_REPORTED)
    source: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    url: str | None = Field(default=None, max_length=2048, pattern=r"^[^\x00-\x1f\x7f]*$")


class LeakAnswer(BaseModel):
    key_hint: str
    label: Label


class GitHubMatch(BaseModel):
    # GitHub may add fields to its payload: they are ignored, not refused.
    token: str = Field(max_length=4096)
    type: str = Field(max_length=200)
    url: str | None = Field(default=None, max_length=2048)
    source: str | None = Field(default=None, max_length=200)


class GitHubAnswer(BaseModel):
    token_hash: str = Field(description="SHA-256 of the token, hex")
    token_type: str
    label: Label


_GITHUB_MATCHES = TypeAdapter(list[GitHubMatch])


def _intake(keystile: Keystile, keys: KeysDep) -> LeakIntake:
    return LeakIntake(
        keys,
        prefix=keystile.settings.key_prefix,
        hashers=key_hashers(keystile.pepper),
        action=keystile.settings.leak_action,
    )


@router.post(
    "",
    response_model=list[LeakAnswer],
    summary="Report leaked keys: each real one is audited, announced and revoked (or only reported)",
    description=(
        "Caller: an admin's Bearer JWT or an API key with scope `leaks:report`. The answers come in the order of "
        "`keys`, each with a hint of the string, never the string itself."
    ),
    responses=REPORTER.answers,
)
async def report_leaks(
    report: LeakReport, request: Request, keystile: KeystileDep, keys: KeysDep, ip: ClientIP
) -> list[LeakAnswer]:
    actor_id = (await REPORTER(request)).user_id
    answers = await _intake(keystile, keys).report(
        report.keys, source=report.source, url=report.url, actor_id=actor_id, ip=ip_text(ip)
    )
    return [LeakAnswer(key_hint=answer.hint, label=answer.label) for answer in answers]


_GITHUB_UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED,
    detail="Missing or invalid GitHub signature",
    headers={"WWW-Authenticate": 'Signature realm="github-secret-scanning"'},
)


@router.post(
    "/github",
    response_model=list[GitHubAnswer],
    summary="GitHub secret scanning partner alerts (signed by GitHub)",
    description=(
        "The body is GitHub's JSON array of `{token, type, url, source}`, signed with ECDSA P-256/SHA-256 by the key "
        "named in `Github-Public-Key-Identifier` (keys from KEYSTILE_GITHUB_SCANNING_KEYS; unset: 404)."
    ),
    responses={
        401: {
            "description": "Missing, malformed or wrong signature, or an unknown key identifier",
            "content": DETAIL_BODY,
            "headers": challenge("`Signature`"),
        },
        404: {"description": "GitHub secret scanning is not configured", "content": DETAIL_BODY},
        503: REPORTER.answers[503],
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _GITHUB_MATCHES.json_schema()}},
        }
    },
)
async def report_github_leaks(
    request: Request, keystile: KeystileDep, keys: KeysDep, ip: ClientIP
) -> list[GitHubAnswer]:
    keys_file = keystile.events.github_keys
    if keys_file is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Not Found")
    body = await request.body()
    signed = await keys_file.verify(
        body, request.headers.get(github.IDENTIFIER_HEADER), request.headers.get(github.SIGNATURE_HEADER)
    )
    if not signed:
        raise _GITHUB_UNAUTHORIZED
    try:
        matches = _GITHUB_MATCHES.validate_python(json.loads(body))
    except (ValueError, RecursionError, ValidationError) as error:
        detail = error.errors(include_input=False) if isinstance(error, ValidationError) else []
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in detail]
            or [{"type": "json_invalid", "loc": ("body",), "msg": "The body is not a JSON array of matches"}]
        ) from None
    intake = _intake(keystile, keys)
    answers = []
    for match in matches:
        source = f"github:{match.source}" if match.source else "github"
        (classified,) = await intake.report([match.token], source=source, url=match.url, actor_id=None, ip=ip_text(ip))
        answers.append(
            GitHubAnswer(
                token_hash=hashlib.sha256(match.token.encode()).hexdigest(),
                token_type=match.type,
                label=classified.label,
            )
        )
    return answers
