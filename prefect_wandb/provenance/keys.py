"""EC signing keys: generation (private key mode 0600, never overwritten), loading, and the fingerprint that names
a public key in both signatures (sha256 of its PEM SubjectPublicKeyInfo, model-signing's own key hint)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["KeyFileError", "fingerprint", "generate", "load_private", "load_public", "public_pem"]

CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)  # what model-signing's key signer accepts


class KeyFileError(ValueError):
    """A key file that cannot be read or is not an EC P-256/384/521 key in PEM; names the file."""


def generate(out_dir: Path, name: str = "signing") -> tuple[Path, Path]:
    """A new EC P-256 key pair in `out_dir`, `<name>.key` and `<name>.pub`: (private key, public key).
    FileExistsError if either file exists: a signing key is never replaced by accident."""
    out_dir = Path(out_dir)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a signing key")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: no race with another writer; 0600 from the first byte on, not chmod-ed afterwards
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    os.chmod(key_path, 0o600)  # a umask cannot widen it, but one could have narrowed it below what we promise
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(public_pem(key.public_key()))
    return key_path, pub_path


def _check_curve(key, path: Path) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or \
            not isinstance(key.curve, CURVES):
        raise KeyFileError(f"{path}: not an EC P-256, P-384 or P-521 key")


def _load(path: Path, what: str, load, kind: str):
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        key = load(blob)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not {kind} ({e})") from None
    _check_curve(key, path)
    return key


def load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    """The signing key at `path`, or KeyFileError, one line naming the file and what is wrong: it cannot be read
    (missing, a folder, no permission), it is a public key, it is encrypted (a run is unattended: no passphrase),
    it is not an EC P-256/384/521 PEM private key, or group or others may access it (mode & 0o077: ssh refuses
    such a key too; a leaked key signs anything)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {path}: {e.strerror or e}") from None
    if b"PUBLIC KEY-----" in blob and b"PRIVATE KEY-----" not in blob:
        raise KeyFileError(f"{path}: a public key, not the private key to sign with (a public key is what "
                           "`verify --public-key` takes)")
    if b"ENCRYPTED" in blob:  # PKCS#8 'ENCRYPTED PRIVATE KEY', or a traditional PEM with 'Proc-Type: 4,ENCRYPTED'
        raise KeyFileError(f"{path}: an encrypted private key; signing runs unattended and takes no passphrase: give "
                           f"an unencrypted copy that only its owner can read (`openssl pkey -in {path} -out "
                           "KEY`, then `chmod 600 KEY`)")
    try:
        key = serialization.load_pem_private_key(blob, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({e})") from None
    _check_curve(key, path)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path}: permissions {mode:04o} are too open for a private key (group or others may "
                           f"access it): `chmod 600 {path}`")
    return key


def load_public(path: Path) -> ec.EllipticCurvePublicKey:
    key = _load(path, "public key", serialization.load_pem_public_key, "a PEM public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the PEM SubjectPublicKeyInfo: the `hint` model-signing writes into its bundles, and the DSSE keyid."""
    return hashlib.sha256(public_pem(key)).hexdigest()
