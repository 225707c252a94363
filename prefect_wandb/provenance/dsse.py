"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1) signed with an EC key, by the reference
implementation: securesystemslib's `dsse.Envelope` (PAE, the envelope's JSON) with its `CryptoSigner` and
`SSlibKey` (ECDSA with the curve's hash: SHA-256 for P-256, DER-encoded signatures).

The one thing of ours is the keyid: the key's fingerprint (`keys.fingerprint`, model-signing's key hint), not
securesystemslib's default keyid, so envelopes are the same as before the library did the work. securesystemslib
only tries a signature whose keyid names the given key; every envelope this tool writes names it so."""

from __future__ import annotations

import copy

from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, SSlibKey

from prefect_wandb.provenance.keys import fingerprint

IN_TOTO = "application/vnd.in-toto+json"


class EnvelopeError(ValueError):
    """The envelope is malformed or no signature in it verifies with the given key."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body: the bytes that are signed."""
    return Envelope(payload, payload_type, {}).pae()


def _sslib_key(key: ec.EllipticCurvePublicKey) -> SSlibKey:
    """`key` as securesystemslib's verifier, named by our fingerprint."""
    return SSlibKey.from_crypto(key, keyid=fingerprint(key))


def sign(payload: bytes, key: ec.EllipticCurvePrivateKey, payload_type: str = IN_TOTO) -> dict:
    envelope = Envelope(payload, payload_type, {})
    envelope.sign(CryptoSigner(key, _sslib_key(key.public_key())))
    return envelope.to_dict()


def verify(envelope: dict, key: ec.EllipticCurvePublicKey, payload_type: str = IN_TOTO) -> bytes:
    """The payload, if a signature of the envelope verifies with `key`; else EnvelopeError saying why."""
    try:
        if envelope["payloadType"] != payload_type:
            raise EnvelopeError(f"payloadType is {envelope['payloadType']!r}, expected {payload_type!r}")
        env = Envelope.from_dict(copy.deepcopy(envelope))  # from_dict rewrites the signatures it is given
    except EnvelopeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # binascii.Error (bad base64) is a ValueError
        raise EnvelopeError(f"not a DSSE envelope ({type(e).__name__}: {e})") from None
    if not env.signatures:
        raise EnvelopeError("the envelope holds no signature")
    verifier = _sslib_key(key)
    try:
        env.verify([verifier], threshold=1)
        return env.payload
    except UnverifiedSignatureError:  # and its subclass VerificationError, what verify raises below the threshold
        pass
    mine, ids = verifier.keyid, sorted(k for k in env.signatures if k)
    if ids and mine not in ids:
        raise EnvelopeError(f"signed by key {', '.join(i[:16] for i in ids)}, not by the given key {mine[:16]}")
    raise EnvelopeError("the signature does not match the payload: the Statement was changed after signing")
