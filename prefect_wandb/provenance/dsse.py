"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1) signed with an EC key.

The signature is over PAE(payloadType, payload) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN being
the byte length in ASCII decimal; ECDSA with the hash matching the curve (SHA-256 for P-256), DER-encoded."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from prefect_wandb.provenance.keys import fingerprint

IN_TOTO = "application/vnd.in-toto+json"


class EnvelopeError(ValueError):
    """The envelope is malformed or no signature in it verifies with the given key."""


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _hash_for(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def sign(payload: bytes, key: ec.EllipticCurvePrivateKey, payload_type: str = IN_TOTO) -> dict:
    sig = key.sign(pae(payload_type, payload), ec.ECDSA(_hash_for(key.curve)))
    return {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
            "signatures": [{"keyid": fingerprint(key.public_key()), "sig": base64.b64encode(sig).decode()}]}


def verify(envelope: dict, key: ec.EllipticCurvePublicKey, payload_type: str = IN_TOTO) -> bytes:
    """The payload, if a signature of the envelope verifies with `key`; else EnvelopeError saying why."""
    try:
        if envelope["payloadType"] != payload_type:
            raise EnvelopeError(f"payloadType is {envelope['payloadType']!r}, expected {payload_type!r}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = [(s.get("keyid", ""), base64.b64decode(s["sig"], validate=True)) for s in envelope["signatures"]]
    except (KeyError, TypeError, binascii.Error, AttributeError) as e:
        raise EnvelopeError(f"not a DSSE envelope ({type(e).__name__}: {e})") from None
    if not sigs:
        raise EnvelopeError("the envelope holds no signature")
    message, algo = pae(payload_type, payload), ec.ECDSA(_hash_for(key.curve))
    for _, sig in sigs:
        try:
            key.verify(sig, message, algo)
            return payload
        except InvalidSignature:
            continue
    mine = fingerprint(key)
    ids = sorted({k for k, _ in sigs if k})
    if ids and mine not in ids:
        raise EnvelopeError(f"signed by key {', '.join(i[:16] for i in ids)}, not by the given key {mine[:16]}")
    raise EnvelopeError("the signature does not match the payload: the Statement was changed after signing")
