"""Signatures follow Standard Webhooks: the specification's published test vector, and keystile's secrets."""

from __future__ import annotations

import base64

from keystile.events import signing
from tests.events.receiver import signature_matches

# The test vector of the Standard Webhooks specification (its reference libraries' tests use it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_keystile_signs_the_specification_test_vector_exactly() -> None:
    signed = signing.signature(VECTOR_SECRET, message_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY)

    assert signed == VECTOR_SIGNATURE


def test_the_tests_independent_verifier_accepts_the_vector_and_refuses_a_changed_body() -> None:
    assert signature_matches(VECTOR_SECRET, VECTOR_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY, VECTOR_SIGNATURE)
    assert not signature_matches(VECTOR_SECRET, VECTOR_ID, str(VECTOR_TIMESTAMP), b'{"test": 1}', VECTOR_SIGNATURE)


def test_new_secrets_are_whsec_and_base64_of_at_least_24_random_bytes() -> None:
    first, second = signing.new_secret(), signing.new_secret()

    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) >= 24
    assert first != second
