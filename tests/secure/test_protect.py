import hashlib
import hmac
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fs_consent.secure.protect import FieldError, FieldProtector, elfproef, normalise, normalise_phone

KEY = bytes(range(64))
OTHER_KEY = bytes(range(1, 65))


@pytest.fixture(scope="module")
def protector():
    return FieldProtector(KEY)


# --- key handling and look-up hashes ----------------------------------------------


@pytest.mark.parametrize("key", [b"", bytes(32), bytes(65), "x" * 64])
def test_key_must_be_64_bytes(key):
    with pytest.raises(ValueError, match="64 bytes"):
        FieldProtector(key)


def _hkdf_sha256(key: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt, one 32-byte block: written out to pin the construction."""
    prk = hmac.new(bytes(32), key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_lookup_hash_construction_is_pinned(protector):
    """Stored hashes must stay findable: the derivation and message layout may not drift."""
    hmac_key = _hkdf_sha256(KEY, b"fs-consent field lookup v1")
    expected = hmac.new(hmac_key, b"phone\x00+31612345678", hashlib.sha256).hexdigest()
    assert protector.lookup_hash("phone", "06 12345678") == expected
    assert expected == "ce6949d621fe0f0293854fdef3177e15d9bbff470fd432177f4ae9e14da91074"


def test_lookup_hash_is_stable_and_keyed(protector):
    again = FieldProtector(KEY)
    assert protector.lookup_hash("name", "Jan de Vries") == again.lookup_hash("name", "Jan de Vries")
    other = FieldProtector(OTHER_KEY)
    assert protector.lookup_hash("name", "Jan de Vries") != other.lookup_hash("name", "Jan de Vries")
    # the same text as another kind hashes apart
    assert protector.lookup_hash("name", "12345") != protector.lookup_hash("address", "12345")


def test_lookup_hash_normalises_per_kind(protector):
    assert protector.lookup_hash("name", "  Jan  de VRIES ") == protector.lookup_hash(
        "name", "jan de vries"
    )
    assert protector.lookup_hash("bsn", "1112.22.333") == protector.lookup_hash("bsn", "111222333")
    assert protector.lookup_hash("bsn", "99999990") == protector.lookup_hash("bsn", "099999990")


def test_lookup_hash_refuses_nothing_to_hash(protector):
    with pytest.raises(ValueError, match="no phone to hash"):
        protector.lookup_hash("phone", "anonymous")
    with pytest.raises(ValueError, match="no name to hash"):
        protector.lookup_hash("name", "   ")


@pytest.mark.parametrize("kind", ["", "Phone", "phone\x00x", "a b", "x" * 33])
def test_kind_is_validated(protector, kind):
    with pytest.raises(ValueError, match="field kind"):
        protector.lookup_hash(kind, "x")
    with pytest.raises(ValueError, match="field kind"):
        protector.seal(kind, "x")


def test_bsn_normalisation_errors_do_not_echo_the_value():
    with pytest.raises(ValueError) as caught:
        normalise("bsn", "12345-67a")
    assert "12345" not in str(caught.value)


# --- sealing ----------------------------------------------------------------------


@given(st.text(max_size=200))
def test_seal_round_trip(value):
    protector = FieldProtector(KEY)
    token = protector.seal("address", value)
    assert token[0] == 1
    assert len(token) == 1 + 12 + len(value.encode("utf-8")) + 16
    assert protector.open("address", token) == value


def test_seal_is_randomised(protector):
    first, second = protector.seal("name", "Jan"), protector.seal("name", "Jan")
    assert first != second
    assert first[1:13] != second[1:13]  # fresh nonce


@given(data=st.data())
def test_any_tampering_is_detected(data):
    protector = FieldProtector(KEY)
    token = bytearray(protector.seal("phone", "+31612345678"))
    index = data.draw(st.integers(0, len(token) - 1))
    token[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FieldError) as caught:
        protector.open("phone", bytes(token))
    assert "612345678" not in str(caught.value)


def test_wrong_kind_wrong_key_and_truncation_fail(protector):
    token = protector.seal("phone", "+31612345678")
    for attempt in (
        lambda: protector.open("name", token),
        lambda: FieldProtector(OTHER_KEY).open("phone", token),
        lambda: protector.open("phone", token[:-1]),
        lambda: protector.open("phone", token[:20]),
        lambda: protector.open("phone", b""),
        lambda: protector.open("phone", b"\x02" + token[1:]),
    ):
        with pytest.raises(FieldError) as caught:
            attempt()
        assert "612345678" not in str(caught.value)


# --- phone numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "written, normal",
    [
        ("06 12345678", "+31612345678"),
        ("+31612345678", "+31612345678"),
        ("0031612345678", "+31612345678"),
        ("0612345678", "+31612345678"),
        ("06-12345678", "+31612345678"),
        ("06.12.34.56.78", "+31612345678"),
        ("+31 (0)6 1234 5678", "+31612345678"),
        ("+31 06 12345678", "+31612345678"),
        ("612345678", "+31612345678"),  # trunks that drop the 0
        ("31612345678", "+31612345678"),  # trunks that drop the +
        ("040-1234567", "+31401234567"),
        ("(040) 123 45 67", "+31401234567"),
        ("0800-1234", "+318001234"),
        ("+49 (30) 1234567", "+49301234567"),
        ("0049 30 1234567", "+49301234567"),
        ("1001", "1001"),  # internal extension: kept, not E.164
        ("14 040", "14040"),  # municipal short number
    ],
)
def test_normalise_phone_examples(written, normal):
    assert normalise_phone(written) == normal


@pytest.mark.parametrize(
    "no_number",
    ["", "  ", "anonymous", "Anonymous", "unknown", "private", "restricted", "unavailable",
     "withheld", "default", "_undef_", "0000000000", "0", "00"],
)
def test_anonymous_callers_have_no_number(no_number):
    assert normalise_phone(no_number) == ""


@pytest.mark.parametrize(
    "bad",
    ["06-12ab5678", "sip:0612345678@example.org", "+", "+0612345678", "061234", "06123456789012",
     "1234567890", "+31 6 1234 5678 9012 345", "06+12345678", "٠٦١٢٣٤٥٦٧٨"],
)
def test_unrecognisable_numbers_raise_without_the_number(bad):
    with pytest.raises(ValueError, match="not a recognisable phone number") as caught:
        normalise_phone(bad)
    digits = re.sub(r"\D", "", bad)
    assert bad not in str(caught.value)
    assert not digits or digits not in str(caught.value)


SEPARATORS = st.sampled_from(["", " ", "-", ".", " - "])
NSN = st.from_regex(r"[1-9][0-9]{8}", fullmatch=True)  # Dutch national significant number
FORMS = ["0{}", "+31{}", "+31 {}", "0031 {}", "+31 (0){}", "+31 (0) {}", "+31 0{}", "31{}", "{}",
         "(0{head}) {rest}"]


@st.composite
def written(draw, nsn):
    """One way of writing the Dutch number ``nsn``: prefix, grouping, separators."""
    cuts = sorted(draw(st.sets(st.integers(1, 8), max_size=4)))
    chunks = [nsn[a:b] for a, b in zip([0, *cuts], [*cuts, 9])]
    body = chunks[0]
    for chunk in chunks[1:]:
        body += draw(SEPARATORS) + chunk
    rest = body[len(chunks[0]):].lstrip(" -.")
    text = draw(st.sampled_from(FORMS)).format(body, head=chunks[0], rest=rest)
    return draw(st.sampled_from(["", " "])) + text + draw(st.sampled_from(["", " "]))


@given(st.data())
def test_every_written_form_normalises_to_e164(data):
    nsn = data.draw(NSN)
    assert normalise_phone(data.draw(written(nsn))) == "+31" + nsn


@given(st.data())
def test_every_written_form_has_the_same_lookup_hash(data):
    protector = FieldProtector(KEY)
    nsn = data.draw(NSN)
    first, second = data.draw(written(nsn)), data.draw(written(nsn))
    assert protector.lookup_hash("phone", first) == protector.lookup_hash("phone", second)
    assert protector.lookup_hash("phone", first) == protector.lookup_hash("phone", "+31" + nsn)


@given(st.from_regex(r"[1-9][0-9]{6,14}", fullmatch=True), SEPARATORS)
def test_international_forms_agree(digits, separator):
    """Every written form gives the same number, or every form is refused alike
    (``+31 00000``: the trunk zeros after +31 leave too few digits)."""

    def outcome(text: str) -> str:
        try:
            return normalise_phone(text)
        except ValueError:
            return "refused"

    spaced = separator.join([digits[:2], digits[2:5], digits[5:]]).strip(" -.")
    assert outcome("+" + digits) == outcome("00" + spaced) == outcome("+" + spaced)


@given(st.text(alphabet="0123456789+-. ()/", max_size=20) | NSN.flatmap(written))
def test_normalise_phone_is_idempotent(text):
    try:
        once = normalise_phone(text)
    except ValueError as exc:
        digits = re.sub(r"\D", "", text)
        assert len(digits) < 4 or digits not in str(exc)
        return
    assert normalise_phone(once) == once
    assert once == "" or re.fullmatch(r"\+[1-9][0-9]{6,14}|[0-9]{1,8}", once)


# --- BSN ----------------------------------------------------------------------------


def test_elfproef_known_examples():
    # 111222333: 9+8+7+12+10+8+9+6-3 = 66 = 6*11        -> valid
    # 123456789: 9+16+21+24+25+24+21+16-9 = 147 = 13*11+4 -> invalid
    # 999999990: 9*44 - 0 = 396 = 36*11                    -> valid
    assert elfproef("111222333")
    assert elfproef("999999990")
    assert not elfproef("123456789")
    assert not elfproef("000000000")  # divisible by 11, but not a BSN


@pytest.mark.parametrize("bad", ["", "11122233", "1112223330", "11122233a", "111 222 333", "١١١٢٢٢٣٣٣", 111222333])
def test_elfproef_wants_nine_ascii_digits(bad):
    assert not elfproef(bad)


@given(st.from_regex(r"[0-9]{8}", fullmatch=True))
def test_elfproef_accepts_exactly_the_check_digit(prefix):
    weighted = sum(int(d) * w for d, w in zip(prefix, range(9, 1, -1)))
    valid = {str(d) for d in range(10) if (weighted - d) % 11 == 0}
    if prefix == "00000000":
        valid.discard("0")
    assert {d for d in "0123456789" if elfproef(prefix + d)} == valid


@given(st.from_regex(r"[0-9]{8}", fullmatch=True), st.integers(0, 8), st.integers(1, 9))
def test_elfproef_catches_every_single_digit_error(prefix, position, delta):
    check = sum(int(d) * w for d, w in zip(prefix, range(9, 1, -1))) % 11
    assume(check < 10 and prefix + str(check) != "000000000")
    bsn = prefix + str(check)
    assert elfproef(bsn)
    typo = bsn[:position] + str((int(bsn[position]) + delta) % 10) + bsn[position + 1:]
    assert not elfproef(typo)
