"""`keygen` and `verify`: the key pair a run signs with, and the offline check of a
signed ONNX file. Nothing heavy is imported (no torch, Prefect, wandb, lineage store): `verify` runs on any host
that has the file, its attestation and the public key.

Exit codes (the CLI's one table, `prefect_wandb/exit_codes.py`): verify 0 verified, 3 a signature or the digest does not
match (the line names which, in words), 4 no attestation for this file, 2 usage (a missing file, an unreadable key);
a `signer.pub` in the attestation folder that is not the --public-key is said (a warning line), not a failure;
keygen 0, or 2 when a key file exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect_wandb.cli.args import Parents, add_command, err, program
from prefect_wandb.exit_codes import Exit


def _keygen(ns: argparse.Namespace) -> Exit:
    from prefect_wandb.provenance import keys
    from prefect_wandb.settings import ConfinementError, allowed_roots, confine

    prog = program()
    try:
        confine("--out", Path(ns.out), allowed_roots(prog.allowed_roots_env), f"${prog.allowed_roots_env}")
    except ConfinementError as e:
        err("keygen", f"{e}")
        return Exit.USAGE
    try:
        key_path, pub_path = keys.generate(Path(ns.out), prog.key_name)
    except FileExistsError as e:
        err("keygen", f"{e}")
        return Exit.USAGE
    except OSError as e:
        err("keygen", f"cannot write into {ns.out}: {e.strerror or e}")
        return Exit.USAGE
    pub = keys.load_public(pub_path)
    print(f"private key {key_path} (mode 0600: keep it secret; runs sign with --sign-private-key {key_path})")
    print(f"public key  {pub_path} (fingerprint {keys.fingerprint(pub)}: give it to whoever verifies)")
    return Exit.OK


def _verify(ns: argparse.Namespace) -> Exit:
    from prefect_wandb.provenance import keys
    from prefect_wandb.provenance.verify import MISSING, VERIFIED, tree, verify

    file = Path(ns.model)
    if file.is_dir():  # an artifact or attestation folder: the signed file is inside it
        inside = sorted(p.name for p in file.glob("*.onnx"))
        hint = f" (give {file / inside[0]})" if len(inside) == 1 else ""
        err("verify", f"{file} is a folder: verify checks one signed file{hint}")
        return Exit.USAGE
    if not file.is_file():
        err("verify", f"{file}: no such file")
        return Exit.USAGE
    try:
        result = verify(file, Path(ns.public_key), Path(ns.attestation) if ns.attestation else None)
    except keys.KeyFileError as e:
        err("verify", f"{e}")
        return Exit.USAGE
    if result.status == MISSING:
        err("verify", f"{result.note}")
        return Exit.NOT_FOUND
    assert result.attestation is not None
    for w in result.warnings:  # said, not a failure: trust comes from --public-key
        err("verify", f"warning: {w}")
    if result.status != VERIFIED:
        for c in result.failed:
            err("verify", f"FAILED {c.name}: {c.detail}")
        return Exit.VERIFY_FAILED
    print(f"verified {file} with key {result.key_fingerprint[:16]} (attestation {result.attestation.folder})")
    for c in result.checks:
        print(f"  ok  {c.name}: {c.detail}")
    assert result.statement is not None
    print("\n".join(tree(result.statement)))
    return Exit.OK


def add_parsers(sub, parents: Parents) -> None:
    """Add `keygen` and `verify` to the CLI's sub-command parsers."""
    kg = add_command(sub, "keygen", help=f"make an EC P-256 signing key pair (DIR/{program().key_name}.key, .pub)")
    kg.add_argument("--out", required=True, metavar="DIR", help="folder for the key pair (never overwritten)")
    kg.set_defaults(handler=_keygen)
    v = add_command(sub, "verify", help="check a signed ONNX file offline: both signatures and its digest "
                    "(exit 0 verified, 3 mismatch, 4 no attestation); needs no store, network, torch or Prefect")
    v.add_argument("model", metavar="MODEL.onnx", help="the ONNX file")
    v.add_argument("--public-key", required=True, metavar="PUB", help="the signer's public key (PEM)")
    v.add_argument("--attestation", metavar="FILE", help="the attestation folder, its attestation.json or its "
                   "<name>.intoto.json (default: beside the file, or its artifact's attestation)")
    v.set_defaults(handler=_verify)
