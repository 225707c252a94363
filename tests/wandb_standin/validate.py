"""Checks the stand-in's answers against the pydantic response models generated inside the installed wandb package
(`wandb/sdk/artifacts/_generated`, `wandb/apis/_generated`, `wandb/sdk/internal/_generated`): for every answer to a
query whose text is one of wandb's generated operations, the operation's result model must parse it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache

PACKAGES = ("wandb.sdk.artifacts._generated", "wandb.apis._generated", "wandb.sdk.internal._generated")


def _norm(query: str) -> str:
    return re.sub(r"\s+", " ", query.replace("#graphql", "")).strip()


@cache
def generated_operations() -> dict[str, tuple[str, type]]:
    """{operation name: (normalised query text, its generated result model)}."""
    from wandb._pydantic.base import GQLResult

    out: dict[str, tuple[str, type]] = {}
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        ops = importlib.import_module(f"{pkg_name}.operations")
        texts = {}
        for value in vars(ops).values():
            if isinstance(value, str) and (m := re.search(r"\b(?:query|mutation)\s+(\w+)", value)):
                texts[m.group(1)] = _norm(value)
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{pkg_name}.{info.name}")
            for name, cls in vars(mod).items():
                if name in texts and isinstance(cls, type) and issubclass(cls, GQLResult) and \
                        cls.__module__ == mod.__name__:
                    out[name] = (texts[name], cls)
    return out


def validate(responses) -> tuple[dict[str, int], set[str]]:
    """Parse each (operation, query, data) answer that has a generated model with that model (raises on the first
    answer the SDK would misread). Returns ({operation: answers validated}, {operations without a model})."""
    gen = generated_operations()
    checked: dict[str, int] = {}
    unmodelled: set[str] = set()
    for op, query, data in responses:
        entry = gen.get(op)
        if entry is None or entry[0] != _norm(query):
            unmodelled.add(op)
            continue
        entry[1].model_validate(data)
        checked[op] = checked.get(op, 0) + 1
    return checked, unmodelled
