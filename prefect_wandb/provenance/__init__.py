"""Signed provenance of an exported model: an EC key pair, a SLSA Provenance v1 in-toto Statement in a DSSE
envelope, a model-signing (Sigstore bundle) signature over the ONNX file, and their offline verification.

Pure: imports neither torch, prefect nor wandb, so `verify` runs on a host that has none of them.
"""

__all__ = ["attest", "keys", "statement", "verify"]  # the signing namespace: each module lists its public names
