"""The key format of API.md section 1, checked against an independent reading of the contract.

`expected_checksum` below is written from API.md alone (CRC-32, base62 `0-9A-Za-z`, most significant digit first,
left-padded to 6), so a mistake shared by the code and its own helpers cannot hide here.
"""

from __future__ import annotations

import re
import string
import zlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from keystile.keys import format as key_format
from keystile.keys.format import generate_key, hint_for, key_id_of, secret_scanner_regex

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase

prefixes = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
key_ids = st.text(alphabet=ALPHABET, min_size=12, max_size=12)
secrets_ = st.text(alphabet=ALPHABET, min_size=43, max_size=43)
any_character = st.characters(codec="utf-8")

NAMED_PREFIXES = [
    pytest.param("ks", id="default"),
    pytest.param("ks_live", id="with-underscore"),
    pytest.param("ks_test_1", id="two-underscores"),
    pytest.param("a", id="one-letter"),
    pytest.param("a_", id="trailing-underscore"),
    pytest.param("x__y", id="double-underscore"),
    pytest.param("abcdefghijklmnop", id="sixteen-characters"),
]


def expected_checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = ALPHABET[digit] + digits
    assert value == 0, "a CRC-32 always fits in 6 base62 digits"
    return digits


def build_key(prefix: str, key_id: str, secret: str) -> str:
    body = f"{prefix}_{key_id}_{secret}"
    return body + expected_checksum(body)


# Generation and parsing


@given(prefix=prefixes)
def test_generated_key_parses_back_to_its_key_id(prefix: str) -> None:
    new_key = generate_key(prefix)

    assert key_id_of(new_key.raw, prefix) == new_key.key_id


@pytest.mark.parametrize("prefix", NAMED_PREFIXES)
def test_generated_key_has_the_contract_shape(prefix: str) -> None:
    new_key = generate_key(prefix)

    match = re.fullmatch(rf"{re.escape(prefix)}_([0-9A-Za-z]{{12}})_([0-9A-Za-z]{{43}})([0-9A-Za-z]{{6}})", new_key.raw)

    assert match is not None, new_key.raw
    assert match.group(1) == new_key.key_id
    assert match.group(3) == expected_checksum(new_key.raw[:-6])
    assert key_id_of(new_key.raw, prefix) is not None


@given(prefix=prefixes, key_id=key_ids, secret=secrets_)
def test_any_key_built_to_the_contract_is_accepted(prefix: str, key_id: str, secret: str) -> None:
    raw = build_key(prefix, key_id, secret)

    assert key_id_of(raw, prefix) == key_id


def test_generated_keys_differ_in_key_id_and_secret() -> None:
    keys = [generate_key("ks").raw for _ in range(200)]

    assert len({raw.rsplit("_", 2)[1] for raw in keys}) == 200
    assert len({raw.rsplit("_", 2)[2][:43] for raw in keys}) == 200


@given(number=st.integers(min_value=0, max_value=2**256 - 1))
def test_secret_width_holds_any_32_byte_value(number: int) -> None:
    encoded = key_format.base62_encode(number, 43)

    assert len(encoded) == 43
    assert sum(ALPHABET.index(c) * 62**power for power, c in enumerate(reversed(encoded))) == number


# Every single-character change is caught


@st.composite
def key_and_prefix(draw: st.DrawFn) -> tuple[str, str]:
    prefix = draw(prefixes)
    return prefix, build_key(prefix, draw(key_ids), draw(secrets_))


@given(data=key_and_prefix(), position=st.integers(min_value=0), replacement=any_character)
def test_any_single_character_substitution_is_rejected(data: tuple[str, str], position: int, replacement: str) -> None:
    prefix, raw = data
    position %= len(raw)
    assume(raw[position] != replacement)

    changed = raw[:position] + replacement + raw[position + 1 :]

    assert key_id_of(changed, prefix) is None


@given(data=key_and_prefix(), position=st.integers(min_value=0), replacement=st.sampled_from(ALPHABET))
def test_any_base62_substitution_after_the_prefix_fails_the_checksum(
    data: tuple[str, str], position: int, replacement: str
) -> None:
    """The hardest case for the checksum: the shape stays valid, only the CRC can notice."""
    prefix, raw = data
    start = len(prefix) + 1
    position = start + position % (len(raw) - start)
    assume(raw[position] not in ("_", replacement))

    changed = raw[:position] + replacement + raw[position + 1 :]

    assert key_id_of(changed, prefix) is None


@given(data=key_and_prefix(), position=st.integers(min_value=0))
def test_any_single_character_deletion_is_rejected(data: tuple[str, str], position: int) -> None:
    prefix, raw = data
    position %= len(raw)

    assert key_id_of(raw[:position] + raw[position + 1 :], prefix) is None


@given(data=key_and_prefix(), position=st.integers(min_value=0), inserted=any_character)
def test_any_single_character_insertion_is_rejected(data: tuple[str, str], position: int, inserted: str) -> None:
    prefix, raw = data
    position %= len(raw) + 1

    assert key_id_of(raw[:position] + inserted + raw[position:], prefix) is None


@given(data=key_and_prefix(), length=st.integers(min_value=0))
def test_any_truncation_is_rejected(data: tuple[str, str], length: int) -> None:
    prefix, raw = data
    length %= len(raw)

    assert key_id_of(raw[:length], prefix) is None


def test_swapping_two_secret_characters_is_rejected() -> None:
    raw = build_key("ks", "4fZq8Lr2Xy0B", "ab" + "c" * 41)
    swapped = raw.replace("ab", "ba", 1)

    assert key_id_of(raw, "ks") is not None
    assert key_id_of(swapped, "ks") is None


# The checksum of the contract


@given(body=st.text(alphabet=st.characters(codec="ascii"), max_size=100))
def test_checksum_is_crc32_in_six_base62_digits(body: str) -> None:
    result = key_format.checksum(body)

    assert result == expected_checksum(body)
    assert len(result) == 6
    assert set(result) <= set(ALPHABET)


@pytest.mark.parametrize(
    ("number", "encoded"),
    [
        pytest.param(0, "000000", id="zero-is-all-padding"),
        pytest.param(9, "000009", id="last-digit"),
        pytest.param(10, "00000A", id="upper-case-after-digits"),
        pytest.param(36, "00000a", id="lower-case-after-upper"),
        pytest.param(61, "00000z", id="largest-digit"),
        pytest.param(62, "000010", id="carry"),
        pytest.param(2**32 - 1, "4gfFC3", id="largest-crc32"),
    ],
)
def test_base62_is_most_significant_first_and_left_padded(number: int, encoded: str) -> None:
    assert key_format.base62_encode(number, 6) == encoded


@given(number=st.integers(min_value=0, max_value=2**32 - 1))
def test_base62_encoding_matches_an_independent_encoder(number: int) -> None:
    expected = ""
    remaining = number
    while remaining:
        remaining, digit = divmod(remaining, 62)
        expected = ALPHABET[digit] + expected

    assert key_format.base62_encode(number, 6) == expected.rjust(6, "0")


@pytest.mark.parametrize(
    ("body", "crc", "encoded"),
    [
        pytest.param("ks_4fZq8Lr2Xy0B_" + "Xb3" * 14 + "Q", 0x3C945B32, "16mWWo", id="ks"),
        pytest.param("ks_live_000000000000_" + "0" * 43, 0x58AE7816, "1cgmIA", id="ks_live"),
    ],
)
def test_checksum_matches_pinned_vectors(body: str, crc: int, encoded: str) -> None:
    """Fixed vectors for other implementations (scanners, SDKs) to check themselves against."""
    assert zlib.crc32(body.encode("ascii")) == crc
    assert key_format.checksum(body) == encoded
    assert key_id_of(body + encoded, body.rsplit("_", 2)[0]) is not None


# Malformed input


def valid_key(prefix: str = "ks") -> str:
    return build_key(prefix, "4fZq8Lr2Xy0B", "Xb3" * 14 + "Q")


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param(valid_key() + "A" * 500, id="513-characters"),
        pytest.param(valid_key() + " " * 10_000, id="padded-with-spaces"),
        pytest.param("A" * 1_000_000, id="one-megabyte"),
        pytest.param(valid_key() + "\n", id="trailing-newline"),
        pytest.param(" " + valid_key(), id="leading-space"),
        pytest.param(valid_key() + "\x00", id="trailing-nul"),
        pytest.param("\x00" + valid_key(), id="leading-nul"),
        pytest.param(valid_key()[:20] + "\x00" + valid_key()[21:], id="nul-replacing-a-character"),
        pytest.param(valid_key()[:20] + "\x00" + valid_key()[20:], id="nul-inserted"),
        pytest.param(valid_key().replace("4", "٤", 1), id="arabic-indic-digit"),
        pytest.param(valid_key().replace("4", "４", 1), id="fullwidth-digit"),
        pytest.param(valid_key().replace("X", "Х", 1), id="cyrillic-lookalike"),
        pytest.param(valid_key() + "é", id="trailing-accent"),
        pytest.param(valid_key().replace("Q", "🔑", 1), id="emoji"),
        pytest.param("KS" + valid_key()[2:], id="upper-case-prefix"),
        pytest.param(valid_key("ks_live"), id="other-deployments-prefix"),
        pytest.param(valid_key().replace("_", "-"), id="dashes-for-underscores"),
        pytest.param("", id="empty"),
        pytest.param("ks_", id="prefix-only"),
        pytest.param("ks_" + "A" * 12 + "_" + "B" * 49, id="right-shape-wrong-checksum"),
    ],
)
def test_malformed_key_is_rejected(presented: str) -> None:
    assert key_id_of(valid_key(), "ks") is not None, "the base key must be valid for this test to mean anything"

    assert key_id_of(presented, "ks") is None


def test_key_of_the_ks_deployment_is_rejected_by_a_ks_live_deployment() -> None:
    assert key_id_of(valid_key("ks"), "ks_live") is None
    assert key_id_of(valid_key("ks_live"), "ks_live") is not None


def test_longest_valid_key_is_far_under_the_512_character_limit() -> None:
    longest = valid_key("abcdefghijklmnop")

    assert len(longest) == 16 + 1 + 12 + 1 + 43 + 6
    assert key_format.MAX_PRESENTED_KEY_LENGTH == 512
    assert key_id_of(longest, "abcdefghijklmnop") is not None


# Hint


@pytest.mark.parametrize("prefix", NAMED_PREFIXES)
def test_hint_shows_prefix_key_id_and_last_four_characters(prefix: str) -> None:
    new_key = generate_key(prefix)

    assert new_key.hint == f"{prefix}_{new_key.key_id}_…{new_key.raw[-4:]}"
    assert hint_for(new_key.raw) == new_key.hint
    secret = new_key.raw[-49:-6]
    assert secret[:8] not in new_key.hint


def test_hint_matches_the_contract_example() -> None:
    raw = "ks_4fZq8Lr2Xy0B_" + "x" * 45 + "Z01a"

    assert hint_for(raw) == "ks_4fZq8Lr2Xy0B_…Z01a"


def test_key_repr_does_not_show_the_raw_key() -> None:
    new_key = generate_key("ks")

    assert new_key.raw not in repr(new_key)


# The regex published for secret scanners


@pytest.mark.parametrize("prefix", NAMED_PREFIXES)
@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{key}", id="alone"),
        pytest.param('API_KEY="{key}"', id="quoted-assignment"),
        pytest.param("curl -H 'X-API-Key: {key}' https://x", id="header"),
        pytest.param("https://x/data?api_key={key}&page=2", id="url"),
        pytest.param("line one\n{key}\nline three", id="own-line"),
    ],
)
def test_scanner_regex_finds_a_generated_key_in_text(prefix: str, template: str) -> None:
    raw = generate_key(prefix).raw

    found = re.findall(secret_scanner_regex(prefix), template.format(key=raw))

    assert found == [raw]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("ks_4fZq8Lr2Xy0_" + "B" * 49, id="key-id-too-short"),
        pytest.param("ks_4fZq8Lr2Xy0BC_" + "B" * 49, id="key-id-too-long"),
        pytest.param("ks_4fZq8Lr2Xy0B_" + "B" * 48, id="tail-too-short"),
        pytest.param("ks_4fZq8Lr2Xy0B_" + "B" * 50, id="tail-too-long"),
        pytest.param("xks_4fZq8Lr2Xy0B_" + "B" * 49, id="glued-to-a-word"),
        pytest.param("kt_4fZq8Lr2Xy0B_" + "B" * 49, id="other-prefix"),
        pytest.param("ks-4fZq8Lr2Xy0B-" + "B" * 49, id="dashes"),
        pytest.param("ks_4fZq8Lr2Xy0B_" + "B" * 48 + "-", id="tail-with-dash"),
        pytest.param("ks_4fZq8Lr2Xy0B_" + "B" * 20 + "+" + "B" * 28, id="tail-with-plus"),
    ],
)
def test_scanner_regex_ignores_near_misses(text: str) -> None:
    assert re.search(secret_scanner_regex("ks"), text) is None


@given(prefix=prefixes)
def test_scanner_regex_matches_exactly_what_key_id_of_could_accept(prefix: str) -> None:
    raw = generate_key(prefix).raw

    assert re.fullmatch(secret_scanner_regex(prefix), raw) is not None
    assert re.fullmatch(secret_scanner_regex(prefix), raw[:-1]) is None
    assert re.fullmatch(secret_scanner_regex(prefix), raw + "A") is None
