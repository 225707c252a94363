"""A small GraphQL executor: runs a query document against plain Python objects.

Objects are dicts; a value that is callable is a resolver, called with the field's arguments as keyword arguments
(resolved from the request's variables and the operation's defaults). `__typename` and `__interfaces` name an
object's type so fragments with a type condition apply only where W&B's schema would apply them. The answer holds
exactly the selected fields under their aliases (directives `@include` / `@skip` honoured), so a field the stand-in
does not know comes back as null and is recorded in `missing` (shown by the state dump), never invented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    parse,
)
from graphql.error import GraphQLSyntaxError
from graphql.pyutils import Undefined
from graphql.utilities import value_from_ast_untyped

_MISSING = object()


class GraphQLFailure(Exception):
    """An answer with a GraphQL `errors` entry (HTTP 200), as W&B gives for a bad request or a missing object."""


class Document:
    def __init__(self, query: str, operation_name: str | None = None):
        try:
            doc = parse(query)
        except GraphQLSyntaxError as e:
            raise GraphQLFailure(f"syntax error in the query: {e.message}") from None
        ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
        self.fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
        if operation_name:
            ops = [o for o in ops if o.name and o.name.value == operation_name] or ops
        if not ops:
            raise GraphQLFailure("no operation in the query")
        self.op = ops[0]
        self.name = operation_name or (self.op.name.value if self.op.name else "")
        self.kind = self.op.operation.value  # "query" or "mutation"

    def root_fields(self) -> list[str]:
        return [s.name.value for s in self.op.selection_set.selections if isinstance(s, FieldNode)]

    def execute(self, root: dict, variables: dict | None) -> tuple[dict, set[str]]:
        vars_ = dict(variables or {})
        for d in self.op.variable_definitions or ():
            if d.variable.name.value not in vars_ and d.default_value is not None:
                vars_[d.variable.name.value] = value_from_ast_untyped(d.default_value, {})
        missing: set[str] = set()
        return _Run(self.fragments, vars_, missing).select(root, self.op.selection_set), missing


class _Run:
    def __init__(self, fragments: dict, variables: dict, missing: set[str]):
        self.fragments, self.vars, self.missing = fragments, variables, missing

    def _included(self, node) -> bool:
        for d in node.directives or ():
            args = {a.name.value: value_from_ast_untyped(a.value, self.vars) for a in d.arguments or ()}
            if d.name.value == "include" and not args.get("if"):
                return False
            if d.name.value == "skip" and args.get("if"):
                return False
        return True

    @staticmethod
    def _applies(obj: dict, type_name: str | None) -> bool:
        if type_name is None or "__typename" not in obj:
            return True
        return type_name == obj["__typename"] or type_name in obj.get("__interfaces", ())

    def _fields(self, obj: dict, selection_set) -> list[FieldNode]:
        out: list[FieldNode] = []
        for sel in selection_set.selections:
            if not self._included(sel):
                continue
            if isinstance(sel, FieldNode):
                out.append(sel)
            elif isinstance(sel, InlineFragmentNode):
                if self._applies(obj, sel.type_condition.name.value if sel.type_condition else None):
                    out += self._fields(obj, sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode):
                frag = self.fragments.get(sel.name.value)
                if frag is None:
                    raise GraphQLFailure(f"unknown fragment {sel.name.value}")
                if self._applies(obj, frag.type_condition.name.value):
                    out += self._fields(obj, frag.selection_set)
        return out

    def select(self, obj: dict, selection_set) -> dict:
        out: dict[str, Any] = {}
        for f in self._fields(obj, selection_set):
            key = f.alias.value if f.alias else f.name.value
            name = f.name.value
            if name == "__typename":
                out[key] = obj.get("__typename")
                continue
            value = obj.get(name, _MISSING)
            if value is _MISSING:
                self.missing.add(f"{obj.get('__typename', '?')}.{name}")
                value = None
            if callable(value):
                # an argument bound to a variable the request left out is absent, as GraphQL has it
                args = {a.name.value: v for a in f.arguments or ()
                        if (v := value_from_ast_untyped(a.value, self.vars)) is not Undefined}
                value = value(**args)
            done = self.complete(value, f.selection_set)
            out[key] = _merge(out[key], done) if key in out else done
        return out

    def complete(self, value: Any, selection_set) -> Any:
        if value is None or selection_set is None:
            return value
        if isinstance(value, list):
            return [self.complete(v, selection_set) for v in value]
        if isinstance(value, dict):
            return self.select(value, selection_set)
        return value


def _merge(a: Any, b: Any) -> Any:
    """The same field selected twice (directly and through a fragment): one answer with both selections."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _merge(a[k], v) if k in a else v for k, v in b.items()}}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [_merge(x, y) for x, y in zip(a, b, strict=True)]
    return b


Resolver = Callable[..., Any]
