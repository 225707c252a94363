"""`mnist-pipeline keygen` and `mnist-pipeline verify`: the key pair a run signs with, and the offline check of a
signed ONNX file. Nothing heavy is imported (no torch, Prefect, wandb, lineage store): `verify` runs on any host
that has the file, its attestation and the public key.

Exit codes (the CLI's one table, `flows/exit_codes.py`): verify 0 verified, 3 a signature or the digest does not
match (the line names which), 4 no attestation for this file, 2 usage (a missing file, an unreadable key);
keygen 0, or 2 when a key file exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_pipeline.flows.common_args import Parents, add_command, parents
from mnist_pipeline.flows.exit_codes import Exit


def _keygen(ns: argparse.Namespace) -> Exit:
    from mnist_pipeline.config import ConfigError, confine
    from prefect_wandb.provenance import keys

    try:
        confine("--out", Path(ns.out))
    except ConfigError as e:
        print(f"mnist-pipeline keygen: {e}", file=sys.stderr)
        return Exit.USAGE
    try:
        key_path, pub_path = keys.generate(Path(ns.out))
    except FileExistsError as e:
        print(f"mnist-pipeline keygen: {e}", file=sys.stderr)
        return Exit.USAGE
    except OSError as e:
        print(f"mnist-pipeline keygen: cannot write into {ns.out}: {e.strerror or e}", file=sys.stderr)
        return Exit.USAGE
    pub = keys.load_public(pub_path)
    print(f"private key {key_path} (mode 0600: keep it secret; runs sign with --sign-private-key {key_path})")
    print(f"public key  {pub_path} (fingerprint {keys.fingerprint(pub)}: give it to whoever verifies)")
    return Exit.OK


def _verify(ns: argparse.Namespace) -> Exit:
    from prefect_wandb.provenance import keys
    from prefect_wandb.provenance.verify import MISSING, VERIFIED, tree, verify

    file = Path(ns.model)
    if not file.is_file():
        print(f"mnist-pipeline verify: {file}: no such file", file=sys.stderr)
        return Exit.USAGE
    try:
        result = verify(file, Path(ns.public_key), Path(ns.attestation) if ns.attestation else None)
    except keys.KeyFileError as e:
        print(f"mnist-pipeline verify: {e}", file=sys.stderr)
        return Exit.USAGE
    if result.status == MISSING:
        print(f"mnist-pipeline verify: {result.note}", file=sys.stderr)
        return Exit.NOT_FOUND
    assert result.attestation is not None
    if result.status != VERIFIED:
        for c in result.failed:
            print(f"mnist-pipeline verify: FAILED {c.name}: {c.detail}", file=sys.stderr)
        return Exit.VERIFY_FAILED
    print(f"verified {file} with key {result.key_fingerprint[:16]} (attestation {result.attestation.folder})")
    for c in result.checks:
        print(f"  ok  {c.name}: {c.detail}")
    assert result.statement is not None
    print("\n".join(tree(result.statement)))
    return Exit.OK


def add_parsers(sub, parents: Parents) -> None:
    """Add `keygen` and `verify` to the CLI's sub-command parsers."""
    kg = add_command(sub, "keygen", help="make an EC P-256 signing key pair (DIR/mnist-signing.key, .pub)")
    kg.add_argument("--out", required=True, metavar="DIR", help="folder for the key pair (never overwritten)")
    kg.set_defaults(handler=_keygen)
    v = add_command(sub, "verify", help="check a signed ONNX file offline: both signatures and its digest "
                    "(exit 0 verified, 3 mismatch, 4 no attestation); needs no store, network, torch or Prefect")
    v.add_argument("model", metavar="MODEL.onnx", help="the ONNX file")
    v.add_argument("--public-key", required=True, metavar="PUB", help="the signer's public key (PEM)")
    v.add_argument("--attestation", metavar="FILE", help="the attestation folder, its attestation.json or its "
                   "<name>.intoto.json (default: beside the file, or its artifact's attestation)")
    v.set_defaults(handler=_verify)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-pipeline")
    add_parsers(parser.add_subparsers(dest="command", required=True), parents())
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # argparse's usage errors exit 2 already; --help exits 0
        return int(e.code or 0)
    return int(ns.handler(ns))


if __name__ == "__main__":
    sys.exit(main())
