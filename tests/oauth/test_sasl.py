"""The SASL messages: XOAUTH2 and OAUTHBEARER initial responses, the server's error challenge."""

from __future__ import annotations

import base64
import json

import pytest

from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response


def test_xoauth2() -> None:
    raw = sasl_initial_response("xoauth2", "support@acme.test", "tok", host="h", port=993)
    assert raw == b"user=support@acme.test\x01auth=Bearer tok\x01\x01"


def test_oauthbearer_rfc7628_example_shape() -> None:
    raw = sasl_initial_response(
        "oauthbearer",
        "user@example.com",
        "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
        host="server.example.com",
        port=143,
    )
    assert raw == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_escapes_the_authzid() -> None:
    raw = sasl_initial_response("oauthbearer", "a,b=c@x", "t", host="h", port=1)
    assert raw.startswith(b"n,a=a=2Cb=3Dc@x,\x01")


@pytest.mark.parametrize(
    ("user", "token"), [("a\x01b", "t"), ("a", "t\x01"), ("a\r\n", "t"), ("a", "t\n")]
)
def test_control_characters_are_refused(user: str, token: str) -> None:
    with pytest.raises(ValueError, match="control"):
        sasl_initial_response("xoauth2", user, token, host="h", port=1)


def test_an_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ValueError, match="xoauth2 or oauthbearer"):
        sasl_initial_response("plain", "u", "t", host="h", port=1)


def test_failed_responses() -> None:
    assert FAILED_SASL_RESPONSE == {"xoauth2": b"", "oauthbearer": b"\x01"}


def _b64(data: object) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return base64.b64encode(text.encode())


@pytest.mark.parametrize(
    ("challenge", "expected"),
    [
        (
            _b64({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}),
            "status 401, schemes bearer, scope https://mail.google.com/",
        ),
        (
            _b64({"status": "invalid_token", "schemes": "bearer"}),
            "status invalid_token, schemes bearer",
        ),
        (
            _b64({"status": "invalid_token", "openid-configuration": "x"}) + b"\r\n",
            "status invalid_token",
        ),
        (_b64({"other": 1}), '{"other": 1}'),
        (_b64("plain words\x00\x07 here"), "plain words here"),
        (b"not base64 at all!", "not base64 at all!"),
        (b"", "no details"),
        (base64.b64encode(b"\xff\xfe"), "\ufffd\ufffd"),
        (_b64("x" * 500), "x" * 199 + "…"),
    ],
)
def test_sasl_error_is_one_line(challenge: bytes, expected: str) -> None:
    line = sasl_error(challenge)
    assert line == expected
    assert "\n" not in line and "\r" not in line
