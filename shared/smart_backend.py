"""SMART Backend Services client credentials (issue 23; docs/FHIR_WRITEBACK.md): the tenant's
private key as a JWK, checked once when it is registered (the API's 422 names what is wrong),
and the signed JWT client assertion the write-back worker trades for an access token.

The private JWK is stored only encrypted (``shared.security.secret_box``), as a webhook's
signing secret is; the public half, its ``kid`` and ``alg`` are what the tenant registers at
the EHR. Only RS384 and ES384 (P-384), the algorithms SMART Backend Services requires servers
to support.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # a larger key only costs time on every request that checks it
# An assertion lives 4 minutes: SMART allows at most 5, and a server's clock may run ahead.
ASSERTION_LIFETIME_S = 240
# What the write-back creates (conditional creates search first: `c` and `s`; SMART v2 scopes).
DEFAULT_SCOPES = " ".join(
    f"system/{resource}.cs"
    for resource in ("DiagnosticReport", "Observation", "DocumentReference", "Media", "Device", "Provenance")
)
MAX_KID_LENGTH = 200


class InvalidPrivateKey(ValueError):
    """The JWK cannot sign client assertions; the message says why, without key material."""


@dataclass(frozen=True)
class SigningKey:
    alg: str
    kid: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]
    """What the EHR registers: kty and the public numbers, with kid, alg and use."""
    private_jwk: dict[str, Any]
    """The JWK as given, with its kid and alg filled in: what is stored (encrypted)."""


def signing_key(jwk: object) -> SigningKey:
    """The key of a private JWK (RSA for RS384, EC P-384 for ES384), or InvalidPrivateKey.

    ``alg`` defaults by key type; ``kid`` to the key's RFC 7638 thumbprint. A key that is public
    only, too short, on another curve, marked for another use, or whose numbers do not make a
    key that signs and verifies is refused."""
    if not isinstance(jwk, dict):
        raise InvalidPrivateKey("private_key_jwk must be a JSON object (a JWK)")
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise InvalidPrivateKey(f"kty must be RSA (for RS384) or EC (for ES384), not {_shown(kty)}")
    alg = jwk.get("alg") or ("RS384" if kty == "RSA" else "ES384")
    if alg not in ALGORITHMS:
        raise InvalidPrivateKey(f"alg must be RS384 or ES384, not {_shown(alg)}")
    if (alg == "RS384") != (kty == "RSA"):
        raise InvalidPrivateKey(f"alg {alg} needs {'an RSA' if alg == 'RS384' else 'an EC'} key, and this one is {kty}")
    if kty == "EC" and jwk.get("crv") != "P-384":
        raise InvalidPrivateKey(f"an ES384 key is on the curve P-384, not {_shown(jwk.get('crv'))}")
    if "d" not in jwk:
        raise InvalidPrivateKey("this is a public key: the private JWK (with its \"d\" member) is needed to sign")
    if jwk.get("use") not in (None, "sig"):
        raise InvalidPrivateKey(f"use must be \"sig\", not {_shown(jwk.get('use'))}")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "sign" not in key_ops):
        raise InvalidPrivateKey("key_ops, when given, must include \"sign\"")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid.strip() or len(kid) > MAX_KID_LENGTH):
        raise InvalidPrivateKey(f"kid must be a non-empty string of at most {MAX_KID_LENGTH} characters")
    try:
        parsed = jwt.PyJWK(dict(jwk), algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise InvalidPrivateKey(f"the JWK's key numbers do not make an {kty} private key ({_reason(exc)})") from None
    if isinstance(parsed, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= parsed.key_size <= MAX_RSA_BITS:
            raise InvalidPrivateKey(
                f"the RSA key has {parsed.key_size} bits; between {MIN_RSA_BITS} and {MAX_RSA_BITS} are accepted"
            )
        public = RSAAlgorithm.to_jwk(parsed.public_key(), as_dict=True)
    elif isinstance(parsed, ec.EllipticCurvePrivateKey):
        public = ECAlgorithm.to_jwk(parsed.public_key(), as_dict=True)
    else:
        raise InvalidPrivateKey(f"the JWK is not an {kty} private key")
    _check_signs(parsed)
    kid = kid or thumbprint(public)
    public_jwk = {**{k: public[k] for k in _PUBLIC_MEMBERS[kty]}, "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(alg=alg, kid=kid, private_key=parsed, public_jwk=public_jwk,
                      private_jwk={**jwk, "kid": kid, "alg": alg})


def stored_signing_key(text: str) -> SigningKey:
    """The key of a private JWK stored by ``signing_key`` (its ``private_jwk`` as JSON)."""
    return signing_key(json.loads(text))


def client_assertion(key: SigningKey, client_id: str, token_url: str, *, now: float | None = None) -> str:
    """The JWT a client_credentials token request carries (SMART Backend Services): iss = sub =
    the client id, aud = the token URL, a fresh jti, exp 4 minutes on, signed with ``kid``."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "jti": secrets.token_urlsafe(24),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_S,
    }
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a kid that names exactly this key."""
    kty = public_jwk["kty"]
    members = {k: public_jwk[k] for k in sorted(_PUBLIC_MEMBERS[kty])}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


_PUBLIC_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def _check_signs(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    """Sign and verify once: JWK numbers that load but do not belong together fail here."""
    message = b"dermasentinel key check"
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(message, padding.PKCS1v15(), hashes.SHA384())
            key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA384())
        else:
            signature = key.sign(message, ec.ECDSA(hashes.SHA384()))
            key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise InvalidPrivateKey("the JWK's private and public numbers do not belong to one key") from None


def _shown(value: object) -> str:
    return repr(value)[:40] if value is not None else "missing"


def _reason(exc: Exception) -> str:
    # The library's messages name members and formats, never key material; cut them short anyway.
    return (str(exc) or type(exc).__name__)[:160]
