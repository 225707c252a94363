"""A model-signing bundle (OpenSSF model-signing, Sigstore bundle format, key-based: no network) over one file.

The same bundle verifies with the standard tool:
`model_signing verify key <file> --signature <file>.sig --public_key <pub>`. A single file is signed under the
identifier ".", so a copy under another name or folder still verifies."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path


class BundleError(ValueError):
    """The bundle does not verify for this file and key; says why."""


def sign(file: Path, private_key: Path, out: Path) -> None:
    from model_signing import signing  # a second or so of imports: only when signing

    signing.Config().use_elliptic_key_signer(private_key=Path(private_key)).sign(Path(file), Path(out))


def verify(file: Path, bundle: Path, public_key: Path) -> None:
    from model_signing import verifying

    noise = io.StringIO()  # model-signing prints warnings on stdout; ours is the only report
    try:
        with contextlib.redirect_stdout(noise):
            verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(Path(file), Path(bundle))
    except (ValueError, KeyError, TypeError, OSError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise BundleError(text) from None
    except Exception as e:  # noqa: BLE001 - the protobuf/JSON parser of a damaged bundle raises its own types
        raise BundleError(f"unreadable bundle ({type(e).__name__}: {e})") from None
