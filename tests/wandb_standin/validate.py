"""Checks the stand-in's answers against the pydantic response models generated inside the installed wandb package
(`wandb/sdk/artifacts/_generated`, `wandb/apis/_generated`, `wandb/sdk/internal/_generated`): for every answer to a
query whose text is one of wandb's generated operations, the operation's result model must parse it.

The public API's hand-written queries (`Runs`, `Run`, the history queries of `wandb/apis/public/runs.py`) and
wandb-core's history queries have no generated model; their answers are checked two ways:
- every object selected through a fragment wandb generated a model for (`LightweightRunFragment`,
  `PageInfoFragment`, ...), where the query's fragment is the generated one, parses with that model;
- the query is valid against `SCHEMA`, the part of W&B's schema these queries read (types and nullability as
  wandb's generated models and wandb-core's generated Go types have them), and every value of the answer has its
  field's type there (a non-null field is never null, a JSONString is a string holding JSON, an Int an integer)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from functools import cache
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    build_schema,
    parse,
    print_ast,
)
from graphql import validate as validate_document

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


# the stand-in's SCHEMA_CHECKED operations and the public API's `Run` (api.run(), a run's full data)
SCHEMA_OPERATIONS = frozenset({"Runs", "Run", "RunFullHistory", "RunSampledHistory", "RunHistoryKeys", "HistoryPage",
                               "SampledHistoryPage", "RunParquetHistory"})
SCHEMA = """
scalar JSONString
scalar JSON
scalar DateTime
scalar Int64

type Query { project(name: String, entityName: String): Project }

type Project {
  internalId: ID!
  readOnly: Boolean
  runCount(filters: JSONString): Int!
  runs(filters: JSONString, order: String, first: Int, after: String): RunConnection
  run(name: String!): Run
}

type RunConnection { edges: [RunEdge!]! pageInfo: PageInfo! }
type RunEdge { node: Run! cursor: String! }
type PageInfo { endCursor: String hasNextPage: Boolean! }
type User { name: String! username: String }
type ParquetHistory { parquetUrls: [String!]! liveData: [JSON!]! }

type Run {
  id: ID!
  projectId: ID!
  name: String!
  displayName: String
  tags: [String!]
  sweepName: String
  state: String
  group: String
  jobType: String
  commit: String
  readOnly: Boolean
  createdAt: DateTime!
  heartbeatAt: DateTime
  description: String
  notes: String
  user: User
  config: JSONString
  summaryMetrics: JSONString
  systemMetrics: JSONString
  historyLineCount: Int
  historyKeys: JSON
  history(samples: Int, minStep: Int64, maxStep: Int64): [String!]!
  events(samples: Int): [String!]!
  sampledHistory(specs: [JSONString!]!): [JSON]!
  parquetHistory(liveKeys: [String!]!): ParquetHistory!
}
"""


@cache
def schema() -> GraphQLSchema:
    return build_schema(SCHEMA)


def _fragment_text(frag: FragmentDefinitionNode) -> str:
    return _norm(print_ast(frag))


@cache
def generated_fragments() -> dict[str, list[tuple[str, type]]]:
    """{fragment name: [(its normalised text, its generated model)]} of every fragment wandb generated a model for
    (a name may be generated in more than one package, with different fields)."""
    from wandb._pydantic.base import GQLResult

    out: dict[str, list[tuple[str, type]]] = {}
    for pkg_name in PACKAGES:
        ops = importlib.import_module(f"{pkg_name}.operations")
        try:
            frags = importlib.import_module(f"{pkg_name}.fragments")
        except ImportError:
            continue
        texts: dict[str, str] = {}
        for value in vars(ops).values():
            if isinstance(value, str) and "fragment " in value:
                for d in parse(value).definitions:
                    if isinstance(d, FragmentDefinitionNode):
                        texts[d.name.value] = _fragment_text(d)
        for name, text in texts.items():
            cls = getattr(frags, name, None)
            if isinstance(cls, type) and issubclass(cls, GQLResult):
                out.setdefault(name, []).append((text, cls))
    return out


def _pairs(doc_fragments: dict, selection_set, data: Any, on_spread) -> None:
    """Walk a selection set alongside its answer, calling on_spread(fragment, object) for each named fragment."""
    if data is None or selection_set is None:
        return
    if isinstance(data, list):
        for item in data:
            _pairs(doc_fragments, selection_set, item, on_spread)
        return
    if not isinstance(data, dict):
        return
    for sel in selection_set.selections:
        if isinstance(sel, FieldNode):
            _pairs(doc_fragments, sel.selection_set, data.get((sel.alias or sel.name).value), on_spread)
        elif isinstance(sel, InlineFragmentNode):
            _pairs(doc_fragments, sel.selection_set, data, on_spread)
        elif isinstance(sel, FragmentSpreadNode) and (frag := doc_fragments.get(sel.name.value)) is not None:
            on_spread(frag, data)
            _pairs(doc_fragments, frag.selection_set, data, on_spread)


def check_fragments(query: str, data: dict) -> list[str]:
    """Parse every object the query selects through a generated fragment with that fragment's model; the names of
    the fragments checked (one per object)."""
    gen = generated_fragments()
    doc = parse(query)
    frags = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    done: list[str] = []

    def spread(frag: FragmentDefinitionNode, obj: dict) -> None:
        text = _fragment_text(frag)
        for gen_text, model in gen.get(frag.name.value, ()):
            if gen_text == text:
                model.model_validate(obj)
                done.append(frag.name.value)
                break

    for op in (d for d in doc.definitions if isinstance(d, OperationDefinitionNode)):
        _pairs(frags, op.selection_set, data, spread)
    return done


class SchemaMismatch(AssertionError):
    pass


def _check_value(path: str, gtype, value: Any, selection_set, frags: dict) -> None:
    if isinstance(gtype, GraphQLNonNull):
        if value is None:
            raise SchemaMismatch(f"{path}: null for the non-null {gtype}")
        gtype = gtype.of_type
    if value is None:
        return
    if isinstance(gtype, GraphQLList):
        if not isinstance(value, list):
            raise SchemaMismatch(f"{path}: {type(value).__name__} for the list {gtype}")
        for i, item in enumerate(value):
            _check_value(f"{path}[{i}]", gtype.of_type, item, selection_set, frags)
        return
    if isinstance(gtype, GraphQLScalarType):
        name = gtype.name
        ok = {"String": isinstance(value, str), "ID": isinstance(value, str), "DateTime": isinstance(value, str),
              "Boolean": isinstance(value, bool),
              "Int": isinstance(value, int) and not isinstance(value, bool),
              "Int64": isinstance(value, int) and not isinstance(value, bool),
              "Float": isinstance(value, int | float) and not isinstance(value, bool),
              "JSONString": isinstance(value, str), "JSON": True}[name]
        if ok and name == "JSONString":
            try:
                json.loads(value)
            except ValueError:
                ok = False
        if not ok:
            raise SchemaMismatch(f"{path}: {value!r:.80} is not a valid {name}")
        return
    assert isinstance(gtype, GraphQLObjectType)
    if not isinstance(value, dict):
        raise SchemaMismatch(f"{path}: {type(value).__name__} for the object {gtype}")
    _check_selection(path, gtype, value, selection_set, frags)


def _check_selection(path: str, parent: GraphQLObjectType, data: dict, selection_set, frags: dict) -> None:
    for sel in selection_set.selections:
        if isinstance(sel, FieldNode):
            if sel.name.value == "__typename":
                continue
            key = (sel.alias or sel.name).value
            if key not in data:
                raise SchemaMismatch(f"{path}.{key}: selected, not answered")
            _check_value(f"{path}.{key}", parent.fields[sel.name.value].type, data[key], sel.selection_set, frags)
        elif isinstance(sel, InlineFragmentNode):
            _check_selection(path, parent, data, sel.selection_set, frags)
        elif isinstance(sel, FragmentSpreadNode):
            _check_selection(path, parent, data, frags[sel.name.value].selection_set, frags)


def check_schema(query: str, data: dict) -> None:
    """The query is valid against SCHEMA and the answer has SCHEMA's types (raises SchemaMismatch)."""
    doc = parse(query)
    errors = validate_document(schema(), doc)
    if errors:
        raise SchemaMismatch(f"the query does not fit the stand-in's schema: {errors[0].message}")
    frags = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    query_type = schema().query_type
    assert query_type is not None
    for op in (d for d in doc.definitions if isinstance(d, OperationDefinitionNode)):
        _check_selection("data", query_type, data, op.selection_set, frags)


def validate(responses) -> tuple[dict[str, int], set[str]]:
    """Parse each (operation, query, data) answer that has a generated model with that model (raises on the first
    answer the SDK would misread). An answer without one: the objects it selects through generated fragments parse
    with their models (counted as `op:Fragment`), and one of SCHEMA_OPERATIONS fits SCHEMA (counted as
    `op:schema`). Returns ({operation: answers validated}, {operations without a model})."""
    gen = generated_operations()
    checked: dict[str, int] = {}
    unmodelled: set[str] = set()
    for op, query, data in responses:
        entry = gen.get(op)
        if entry is None or entry[0] != _norm(query):
            unmodelled.add(op)
            for frag in check_fragments(query, data):
                checked[f"{op}:{frag}"] = checked.get(f"{op}:{frag}", 0) + 1
            if op in SCHEMA_OPERATIONS:
                check_schema(query, data)
                checked[f"{op}:schema"] = checked.get(f"{op}:schema", 0) + 1
            continue
        entry[1].model_validate(data)
        checked[op] = checked.get(op, 0) + 1
    return checked, unmodelled
