"""Hyperparameter sweep files (W&B's sweep-config format, where it overlaps) and their expansion into trials.

Pure code: no Prefect, no W&B, no torch. A sweep file is read, checked by the pydantic models below and expanded
into a deterministic list of `Trial`s, each a fully validated `PipelineConfig`, before any work starts; anything we
do not support is refused with one `SweepError` line: `file: where.in.the.file: problem`.

    method: grid | random
    metric: {name: test_accuracy | test_loss, goal: maximize | minimize}
    parameters:
      train.learning_rate: {values: [0.001, 0.005]}      # or {value: x}
      train.batch_size: {min: 32, max: 128, distribution: int_uniform}   # random only
    run_cap: 8            # the number of trials (random: required; grid: the first run_cap of the product)
    seed: 0               # ours, random only: the sampling seed (W&B has none; the list must be reproducible)
    name: / description:  # free text
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.functional_validators import BeforeValidator
from pydantic.types import Discriminator, Tag
from pydantic_core import ArgsKwargs

from mnist_pipeline.config import PipelineConfig

# What a trial may vary: what decides the weights, short of the data (prepared once for the whole sweep) and the
# number of classes (fixed by the data).
PARAMETER_PATHS = ("train.learning_rate", "train.batch_size", "train.epochs", "train.kernels", "train.seed")
# W&B sweeps (and its tutorial) name the hyperparameters at the top level: accept those names as aliases.
ALIASES = {p.split(".", 1)[1]: p for p in PARAMETER_PATHS}
# W&B keys, and values of method or distribution, we know and do not support, with the reason given to the user.
UNSUPPORTED = {
    "bayes": "needs a model of past results (W&B's server-side tuner); use grid or random",
    "early_terminate": "trials are not stopped early here; every trial runs its epochs",
    "program": "the sweep runs this pipeline, not a program", "command": "the sweep runs this pipeline, not a command",
    "project": "give the W&B project with --wandb-project", "entity": "give the W&B entity with --wandb-entity",
    "log_uniform": "W&B's log_uniform takes exponents of e; use log_uniform_values with plain min/max",
    "normal": "unbounded; use uniform or values", "q_normal": "unbounded; use q_uniform or values",
    "log_normal": "unbounded; use log_uniform_values or values",
    "q_log_normal": "unbounded; use q_log_uniform_values or values",
    "inv_log_uniform": "not supported; use log_uniform_values",
    "inv_log_uniform_values": "not supported; use log_uniform_values",
    "beta": "not supported; use uniform or values", "q_beta": "not supported; use q_uniform or values",
}
MAX_TRIALS = 1000


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SweepError(ValueError):
    """A sweep file we refuse; the message is one line that names the key or trial."""


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(v: Any) -> Any:
    if not _number(v):
        raise ValueError(f"must be a finite number, got {v!r}")
    return v


def _list(v: Any) -> tuple:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"must be a list, got {v!r}")
    return _freeze(list(v))


Number = Annotated[int | float, BeforeValidator(_finite)]  # no bool, inf or nan; an int stays an int


def _known_keys(cls: Any, data: Any) -> Any:
    """Name a W&B key or value we refuse with the reason, an unknown key with those allowed (not extra="forbid")."""
    allowed = list(cls.__pydantic_fields__)
    if isinstance(data, (cls, ArgsKwargs)):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"must be a mapping of keys ({', '.join(allowed)}), got {data!r}")
    for k, v in data.items():
        if k in UNSUPPORTED:
            raise ValueError(f"{k!r} is not supported: {UNSUPPORTED[k]}")
        if k not in allowed:
            raise ValueError(f"unknown key {k!r} (allowed: {', '.join(allowed)})")
        if k in ("method", "distribution") and isinstance(v, str) and v in UNSUPPORTED:
            raise ValueError(f"{k} {v!r} is not supported: {UNSUPPORTED[v]}")
    return data


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Metric:
    """What ranks the trials: a metric of the evaluation's metrics artifact, and its goal."""
    name: Literal["test_accuracy", "test_loss"]
    goal: Literal["maximize", "minimize"] = "minimize"  # W&B's default goal

    _keys = model_validator(mode="before")(_known_keys)

    def better(self, a: float, b: float) -> bool:
        """Is value `a` strictly better than `b`?"""
        return a > b if self.goal == "maximize" else a < b


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    _keys = model_validator(mode="before")(_known_keys)


class _Spec(_Strict):
    """One parameter's search space (`Parameter`): a list of values to choose from, or a range (random only)."""

    def choices(self) -> tuple:
        return ()

    def sample(self, rng: random.Random) -> Any:
        return _thaw(rng.choice(self.choices()))

    def to_dict(self) -> dict:
        return {"values": [_thaw(v) for v in self.choices()]}


class Values(_Spec):
    values: Annotated[tuple, BeforeValidator(_list)]
    distribution: Literal["categorical"] | None = None

    def choices(self) -> tuple:
        return self.values

    @model_validator(mode="after")
    def _distinct(self) -> Values:
        if not self.values:
            raise ValueError("values must be a non-empty list, got []")
        if dupes := sorted({_show(_thaw(v)) for v in self.values if self.values.count(v) > 1}):
            raise ValueError(f"duplicate value(s) {', '.join(dupes)}")
        return self


class Value(_Spec):
    value: Annotated[Any, BeforeValidator(_freeze)]
    distribution: Literal["constant"] | None = None

    def choices(self) -> tuple:
        return (self.value,)


class Range(_Spec):
    min: Number
    max: Number
    distribution: (Literal["uniform", "int_uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values"]
                   | None) = None  # None: W&B's inference (`dist`)
    q: Number | None = None

    @property
    def dist(self) -> str:  # W&B's inference where none is given: two integers are int_uniform, otherwise uniform
        return self.distribution or ("int_uniform" if isinstance(self.min, int) and isinstance(self.max, int)
                                     else "uniform")

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        lo, hi, d, q = self.min, self.max, self.dist, self.q
        if lo > hi:
            raise ValueError(f"min {lo} is larger than max {hi}")
        if d == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
            raise ValueError(f"int_uniform needs integer min and max, got {lo!r} and {hi!r}")
        if d in ("log_uniform_values", "q_log_uniform_values") and lo <= 0:
            raise ValueError(f"{d} needs min > 0, got {lo!r}")
        if q is not None and (d not in ("q_uniform", "q_log_uniform_values") or q <= 0):
            raise ValueError("q must be a positive number, and only with q_uniform or q_log_uniform_values")
        return self

    def sample(self, rng: random.Random) -> Any:
        d, lo, hi = self.dist, self.min, self.max
        if d == "int_uniform":
            return rng.randint(int(lo), int(hi))
        if d == "uniform":
            return rng.uniform(lo, hi)
        if d == "log_uniform_values":
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        q = self.q or 1.0
        x = rng.uniform(lo, hi) if d == "q_uniform" else math.exp(rng.uniform(math.log(lo), math.log(hi)))
        out = round(x / q) * q
        return int(out) if float(q).is_integer() and float(lo).is_integer() else out

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True) | {"distribution": self.dist}


def _shape(spec: Any) -> str | None:
    """Which of the three a parameter's spec is: it has exactly one of values, value or min/max."""
    if isinstance(spec, _Spec):  # a checked one (its tag is its class's name)
        return type(spec).__name__
    if not isinstance(spec, Mapping):
        return None
    forms = [k for k in ("values", "value", "min") if k in spec] or [k for k in ("max",) if k in spec]
    return {"values": "Values", "value": "Value"}.get(forms[0], "Range") if len(forms) == 1 else None


Parameter = Annotated[Annotated[Values, Tag("Values")] | Annotated[Value, Tag("Value")]
                      | Annotated[Range, Tag("Range")],
                      Discriminator(_shape, custom_error_type="parameter",
                                    custom_error_message="give exactly one of values, value or min/max")]


class Sweep(_Strict):
    """A checked sweep file; `parameters` by their full path (train.learning_rate), in the file's order."""
    method: Literal["grid", "random"]
    metric: Metric = Metric("test_accuracy", "maximize")  # W&B needs one only for bayes; a winner needs one
    parameters: dict[Annotated[str, BeforeValidator(str)], Parameter] = Field({}, validate_default=True)
    run_cap: Annotated[int, Field(strict=True, gt=0, le=MAX_TRIALS)] | None = Field(None, validate_default=True)
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    name: Annotated[str, Field(strict=True)] | None = None
    description: Annotated[str, Field(strict=True)] | None = None

    @field_validator("parameters")
    @classmethod
    def _paths(cls, params: dict[str, Parameter], info: ValidationInfo) -> dict[str, Parameter]:
        if not params:
            raise ValueError("give at least one parameter, e.g. train.learning_rate: {values: [0.001, 0.01]}")
        seen: dict[str, str] = {}
        for key, spec in params.items():
            if (path := ALIASES.get(key, key)) not in PARAMETER_PATHS:
                raise ValueError(f"unknown parameter path {key!r} (a sweep may vary: {', '.join(PARAMETER_PATHS)})")
            if isinstance(spec, Range) and info.data.get("method") == "grid":
                raise ValueError(f"{key!r} is a range: a grid sweep needs values (or value) for every parameter")
            if path in seen:
                raise ValueError(f"{key!r} and {seen[path]!r} are the same parameter {path}")
            seen[path] = key
        return {ALIASES.get(k, k): spec for k, spec in params.items()}

    @field_validator("run_cap")
    @classmethod
    def _random_needs_cap(cls, run_cap: int | None, info: ValidationInfo) -> int | None:
        if run_cap is None and info.data.get("method") == "random":
            raise ValueError("a random sweep needs run_cap (the number of trials to sample)")
        return run_cap

    def to_dict(self) -> dict:
        """The sweep as recorded with its result (plain JSON)."""
        return self.model_dump(mode="json") | {"parameters": {k: p.to_dict() for k, p in self.parameters.items()}}


@dataclass(frozen=True)
class Trial:
    index: int
    params: dict  # parameter path -> value, in the sweep file's order
    config: PipelineConfig = field(repr=False)


# --------------------------------------------------------------------------------------------- parsing


def load_sweep(path: str | Path) -> Sweep:
    """Read a YAML or JSON sweep file (JSON is YAML) and check it; SweepError names the file and what is wrong."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepError(f"cannot read sweep file {str(path)!r}: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SweepError(f"sweep file {str(path)!r} is not valid YAML/JSON{where}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    return parse_sweep(raw, source=str(path))


def parse_sweep(raw: Any, source: str | None = None) -> Sweep:
    """Check a sweep's mapping. SweepError, one line: `source: where: problem` (the first problem; `where`, the
    location joined with dots, is empty at the top level, where without a source it is `sweep`)."""
    try:
        return Sweep.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    # the location, less the union's own step (the shape's tag: parameters.<key>.Range.min)
    where = ".".join(str(x) for i, x in enumerate(err["loc"]) if not (i == 2 and x in ("Values", "Value", "Range")))
    if isinstance(cause, ValueError):  # ours
        problem = str(cause)
    elif err["type"] == "missing":
        problem = "missing (required)"
    else:  # pydantic's own: "Input should be a valid integer" -> "should be a valid integer, got 2.5"
        problem = f"{err['msg'].removeprefix('Input ')}, got {err['input']!r}"
    raise SweepError(": ".join(x for x in (source, where or (None if source else "sweep"), problem) if x))


# --------------------------------------------------------------------------------------------- expansion


def _points(sweep: Sweep) -> list[dict]:
    if sweep.method == "grid":
        grid = itertools.product(*[[_thaw(v) for v in p.choices()] for p in sweep.parameters.values()])
        product = [dict(zip(sweep.parameters, combo, strict=True)) for combo in grid]
        return product[: sweep.run_cap] if sweep.run_cap else product
    rng = random.Random(sweep.seed)
    points: list[dict] = []
    seen: set[str] = set()
    cap = sweep.run_cap or 1  # parse_sweep requires run_cap for random sweeps
    for _ in range(cap * 20):  # bounded: a small space yields fewer distinct trials than run_cap
        point = {path: p.sample(rng) for path, p in sweep.parameters.items()}
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(point)
            if len(points) == cap:
                break
    return points


def expand(sweep: Sweep, base: PipelineConfig) -> list[Trial]:
    """Every trial's full config, validated before anything runs: the first invalid one is named."""
    points = _points(sweep)
    if len(points) > MAX_TRIALS:
        raise SweepError(f"the grid has {len(points)} trials, more than {MAX_TRIALS}: set run_cap or fewer values")
    base_dump = base.model_dump(mode="json")
    trials = []
    for i, point in enumerate(points):
        dump = json.loads(json.dumps(base_dump))
        for path, value in point.items():
            section, leaf = path.split(".")
            dump[section][leaf] = value
        try:
            cfg = PipelineConfig.model_validate(dump)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise SweepError(f"trial {i} ({', '.join(f'{k}={_show(v)}' for k, v in point.items())}): {where}: "
                             f"{err['msg']}") from None
        trials.append(Trial(index=i, params=point, config=cfg))
    return trials


# --------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class TrialResult:
    """What the select step knows of one trial."""
    index: int
    params: dict
    status: str  # finished | reused | failed
    metrics: dict | None = None  # the evaluation's metrics (test_accuracy, test_loss...) when it finished
    error: str | None = None


def rank(results: Sequence[TrialResult], metric: Metric) -> list[TrialResult]:
    """Trials with the metric, best first (ties: the earlier trial); failed trials are left out."""
    scored = [r for r in results if r.metrics is not None and _number(r.metrics.get(metric.name))]
    sign = -1.0 if metric.goal == "maximize" else 1.0
    return sorted(scored, key=lambda r: (sign * float((r.metrics or {})[metric.name]), r.index))

