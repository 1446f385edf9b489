"""The SMART Backend Services key checks and client assertions (issue 23), with no service."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.smart_backend import (
    ASSERTION_LIFETIME_S,
    DEFAULT_SCOPES,
    InvalidPrivateKey,
    client_assertion,
    signing_key,
    stored_signing_key,
    thumbprint,
)


@pytest.fixture(scope="module")
def rsa_jwk() -> dict:
    return RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)


@pytest.fixture(scope="module")
def ec_jwk() -> dict:
    return ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()), as_dict=True)


def test_an_rsa_key_signs_rs384_and_shows_only_its_public_half(rsa_jwk):
    key = signing_key({**rsa_jwk, "kid": "ds-1"})
    assert (key.alg, key.kid) == ("RS384", "ds-1")
    assert set(key.public_jwk) == {"kty", "n", "e", "kid", "alg", "use"}
    assert key.private_jwk["d"] == rsa_jwk["d"] and key.private_jwk["alg"] == "RS384"
    # What is stored reads back as the same key.
    import json

    again = stored_signing_key(json.dumps(key.private_jwk))
    assert again.public_jwk == key.public_jwk


def test_an_ec_key_signs_es384_and_its_kid_defaults_to_the_thumbprint(ec_jwk):
    key = signing_key(ec_jwk)
    assert key.alg == "ES384"
    assert set(key.public_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert key.kid == thumbprint(key.public_jwk)


def test_the_thumbprint_is_rfc_7638s():
    example = {  # RFC 7638 section 3.1
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
            "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zg"
            "dAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_assertion_carries_what_smart_backend_services_asks(rsa_jwk, ec_jwk):
    for jwk, algorithm in ((rsa_jwk, "RS384"), (ec_jwk, "ES384")):
        key = signing_key(jwk)
        token = client_assertion(key, "client-7", "https://ehr.example.test/token")
        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["kid"], header["typ"]) == (algorithm, key.kid, "JWT")
        public = jwt.PyJWK({k: v for k, v in key.public_jwk.items() if k != "use"}).key
        claims = jwt.decode(token, public, algorithms=[algorithm], audience="https://ehr.example.test/token")
        assert claims["iss"] == claims["sub"] == "client-7"
        assert 0 < claims["exp"] - time.time() <= ASSERTION_LIFETIME_S <= 300
        assert len(claims["jti"]) >= 20
        assert client_assertion(key, "client-7", "https://ehr.example.test/token") != token  # a fresh jti


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r, e: "not a jwk", "JSON object"),
        (lambda r, e: {"kty": "oct", "k": "c2VjcmV0"}, "kty must be RSA"),
        (lambda r, e: {k: v for k, v in r.items() if k != "d"}, "public key"),
        (lambda r, e: {**r, "alg": "RS256"}, "alg must be RS384 or ES384"),
        (lambda r, e: {**e, "alg": "RS384"}, "alg RS384 needs an RSA key"),
        (lambda r, e: {**e, "crv": "P-256"}, "P-384"),
        (lambda r, e: {**r, "use": "enc"}, "use must be"),
        (lambda r, e: {**r, "kid": ""}, "kid must be"),
        (lambda r, e: {**r, "d": "AAAA"}, "key numbers"),
        (lambda r, e: RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024),
                                          as_dict=True), "has 1024 bits"),
    ],
)
def test_a_key_that_cannot_sign_is_refused_saying_why(rsa_jwk, ec_jwk, change, says):
    with pytest.raises(InvalidPrivateKey, match=says) as refused:
        signing_key(change(rsa_jwk, ec_jwk))
    assert rsa_jwk["d"] not in str(refused.value)


def test_the_default_scopes_are_smart_v2_create_and_search():
    scopes = DEFAULT_SCOPES.split()
    assert "system/DiagnosticReport.cs" in scopes and "system/DocumentReference.cs" in scopes
    assert all(scope.startswith("system/") and scope.endswith(".cs") for scope in scopes)
