"""Hyperparameter sweep files (W&B's sweep-config format, where it overlaps) and their expansion into trials.

Pure code: no Prefect, no W&B, no torch. A sweep file is read, checked and expanded into a deterministic list of
`Trial`s, each a fully validated `PipelineConfig`, before any work starts; anything we do not support is refused
with one `SweepError` line naming the key.

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
from typing import Any

from pydantic import ValidationError

from mnist_pipeline.config import PipelineConfig

METHODS = ("grid", "random")
GOALS = ("maximize", "minimize")
# Metric names of the evaluation's metrics artifact a sweep can be ranked by, and their natural goal.
METRICS = {"test_accuracy": "maximize", "test_loss": "minimize"}
# What a trial may vary: what decides the weights, short of the data (prepared once for the whole sweep) and the
# number of classes (fixed by the data).
PARAMETER_PATHS = ("train.learning_rate", "train.batch_size", "train.epochs", "train.kernels", "train.seed")
# W&B sweeps (and its tutorial) name the hyperparameters at the top level: accept those names as aliases.
ALIASES = {p.split(".", 1)[1]: p for p in PARAMETER_PATHS}
TOP_KEYS = ("method", "metric", "parameters", "run_cap", "name", "description", "seed")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values")
# W&B keys and distributions we know and do not support, with the reason given to the user.
UNSUPPORTED = {
    "bayes": "needs a model of past results (W&B's server-side tuner); use grid or random",
    "early_terminate": "trials are not stopped early here; every trial runs its epochs",
    "program": "the sweep runs this pipeline, not a program",
    "command": "the sweep runs this pipeline, not a command",
    "project": "give the W&B project with --wandb-project",
    "entity": "give the W&B entity with --wandb-entity",
    "log_uniform": "W&B's log_uniform takes exponents of e; use log_uniform_values with plain min/max",
    "normal": "unbounded; use uniform or values",
    "q_normal": "unbounded; use q_uniform or values",
    "log_normal": "unbounded; use log_uniform_values or values",
    "q_log_normal": "unbounded; use q_log_uniform_values or values",
    "inv_log_uniform": "not supported; use log_uniform_values",
    "inv_log_uniform_values": "not supported; use log_uniform_values",
    "beta": "not supported; use uniform or values",
    "q_beta": "not supported; use q_uniform or values",
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


@dataclass(frozen=True)
class Metric:
    name: str
    goal: str

    def better(self, a: float, b: float) -> bool:
        """Is value `a` strictly better than `b`?"""
        return a > b if self.goal == "maximize" else a < b


@dataclass(frozen=True)
class Parameter:
    """One parameter's search space: a list of values, or a range with a distribution (random only)."""
    path: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    distribution: str | None = None
    q: float | None = None

    def sample(self, rng: random.Random) -> Any:
        if self.values is not None:
            return _thaw(rng.choice(self.values))
        d, lo, hi = self.distribution, self.low, self.high
        assert lo is not None and hi is not None  # a range, checked by _parameter
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


@dataclass(frozen=True)
class Trial:
    index: int
    params: dict  # parameter path -> value, in the sweep file's order
    config: PipelineConfig = field(repr=False)


@dataclass(frozen=True)
class Sweep:
    method: str
    metric: Metric
    parameters: tuple[Parameter, ...]
    run_cap: int | None = None
    seed: int = 0
    name: str | None = None
    description: str | None = None

    def to_dict(self) -> dict:
        """The sweep as recorded with its result (plain JSON)."""
        params: dict[str, dict] = {}
        for p in self.parameters:
            if p.values is not None:
                params[p.path] = {"values": [_thaw(v) for v in p.values]}
            else:
                params[p.path] = {k: v for k, v in (("min", p.low), ("max", p.high),
                                                     ("distribution", p.distribution), ("q", p.q)) if v is not None}
        return {"name": self.name, "description": self.description, "method": self.method,
                "metric": {"name": self.metric.name, "goal": self.metric.goal}, "parameters": params,
                "run_cap": self.run_cap, "seed": self.seed}


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _keys(where: str, spec: Mapping, allowed: Sequence[str]) -> None:
    for k in spec:
        if k in UNSUPPORTED:
            raise SweepError(f"{where}: {k!r} is not supported: {UNSUPPORTED[k]}")
        if k not in allowed:
            raise SweepError(f"{where}: unknown key {k!r} (allowed: {', '.join(allowed)})")


# --------------------------------------------------------------------------------------------- parsing


def load_sweep(path: str | Path) -> Sweep:
    """Read a YAML or JSON sweep file (JSON is YAML) and check it; SweepError names what is wrong."""
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
    return parse_sweep(raw)


def parse_sweep(raw: Any) -> Sweep:
    if not isinstance(raw, Mapping):
        raise SweepError(f"a sweep file must be a mapping of keys (method, metric, parameters...), got "
                         f"{type(raw).__name__}")
    _keys("sweep", raw, TOP_KEYS)
    method = raw.get("method")
    if method in UNSUPPORTED:
        raise SweepError(f"method {method!r} is not supported: {UNSUPPORTED[method]}")
    if method not in METHODS:
        raise SweepError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = _metric(raw.get("metric"))
    params = raw.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise SweepError("parameters: give at least one parameter, e.g. train.learning_rate: {values: [0.001, 0.01]}")
    parsed: list[Parameter] = []
    seen: dict[str, str] = {}
    for key, spec in params.items():
        p = _parameter(str(key), spec, method)
        if p.path in seen:
            raise SweepError(f"parameters: {key!r} and {seen[p.path]!r} are the same parameter {p.path}")
        seen[p.path] = key
        parsed.append(p)
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise SweepError(f"run_cap must be a positive integer, got {run_cap!r}")
    if method == "random" and run_cap is None:
        raise SweepError("run_cap: a random sweep needs run_cap (the number of trials to sample)")
    if isinstance(run_cap, int) and run_cap > MAX_TRIALS:
        raise SweepError(f"run_cap {run_cap} is more than {MAX_TRIALS} trials")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SweepError(f"seed must be a non-negative integer, got {seed!r}")
    for k in ("name", "description"):
        if raw.get(k) is not None and not isinstance(raw[k], str):
            raise SweepError(f"{k} must be text, got {raw[k]!r}")
    return Sweep(method=method, metric=metric, parameters=tuple(parsed), run_cap=run_cap, seed=seed,
                 name=raw.get("name"), description=raw.get("description"))


def _metric(spec: Any) -> Metric:
    if spec is None:  # W&B needs a metric only for bayes; a winner needs one: the evaluation's accuracy
        return Metric("test_accuracy", "maximize")
    if not isinstance(spec, Mapping):
        raise SweepError(f"metric must be a mapping {{name, goal}}, got {spec!r}")
    _keys("metric", spec, ("name", "goal"))
    name = spec.get("name")
    if name not in METRICS:
        raise SweepError(f"metric.name must be one of {', '.join(METRICS)} (the evaluation's metrics), got {name!r}")
    goal = spec.get("goal", "minimize")  # W&B's default goal
    if goal not in GOALS:
        raise SweepError(f"metric.goal must be maximize or minimize, got {goal!r}")
    return Metric(name, goal)


def _parameter(key: str, spec: Any, method: str) -> Parameter:
    path = ALIASES.get(key, key)
    where = f"parameters.{key}"
    if path not in PARAMETER_PATHS:
        raise SweepError(f"{where}: unknown parameter path {key!r} (a sweep may vary: {', '.join(PARAMETER_PATHS)})")
    if not isinstance(spec, Mapping):
        raise SweepError(f"{where}: give {{values: [...]}}, {{value: x}} or {{min, max, distribution}}, got {spec!r}")
    _keys(where, spec, ("values", "value", "min", "max", "distribution", "q"))
    dist = spec.get("distribution")
    if dist in UNSUPPORTED:
        raise SweepError(f"{where}: distribution {dist!r} is not supported: {UNSUPPORTED[dist]}")
    forms = [k for k in ("values", "value", "min") if k in spec]
    if "max" in spec and "min" not in spec:
        forms.append("max")
    if len(forms) != 1:
        raise SweepError(f"{where}: give exactly one of values, value or min/max (got {', '.join(forms) or 'none'})")
    if "values" in spec:
        if dist not in (None, "categorical"):
            raise SweepError(f"{where}: values go with distribution categorical, not {dist!r}")
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: values must be a non-empty list, got {values!r}")
        frozen = [_freeze(v) for v in values]
        dupes = sorted({_show(_thaw(v)) for v in frozen if frozen.count(v) > 1})
        if dupes:
            raise SweepError(f"{where}: duplicate value(s) {', '.join(dupes)}")
        return Parameter(path, values=tuple(frozen))
    if "value" in spec:
        if dist not in (None, "constant"):
            raise SweepError(f"{where}: value goes with distribution constant, not {dist!r}")
        return Parameter(path, values=(_freeze(spec["value"]),))
    lo: Any = spec.get("min")
    hi: Any = spec.get("max")
    if not _number(lo) or not _number(hi):
        raise SweepError(f"{where}: min and max must both be numbers, got min={lo!r} max={hi!r}")
    if lo > hi:
        raise SweepError(f"{where}: min {lo} is larger than max {hi}")
    if method == "grid":
        raise SweepError(f"{where}: a grid sweep needs values (or value) for every parameter, not a range")
    if dist is None:  # W&B's inference: two integers are int_uniform, otherwise uniform
        dist = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"{where}: unknown distribution {dist!r} (supported: {', '.join(DISTRIBUTIONS)})")
    if dist == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise SweepError(f"{where}: int_uniform needs integer min and max, got {lo!r} and {hi!r}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and lo <= 0:
        raise SweepError(f"{where}: {dist} needs min > 0, got {lo!r}")
    q = spec.get("q")
    if q is not None and (dist not in ("q_uniform", "q_log_uniform_values") or not _number(q) or q <= 0):
        raise SweepError(f"{where}: q must be a positive number, and only with q_uniform or q_log_uniform_values")
    return Parameter(path, low=lo, high=hi, distribution=dist, q=q)


# --------------------------------------------------------------------------------------------- expansion


def _points(sweep: Sweep) -> list[dict]:
    if sweep.method == "grid":
        grid = itertools.product(*[[_thaw(v) for v in p.values or ()] for p in sweep.parameters])
        product = [dict(zip([p.path for p in sweep.parameters], combo, strict=True)) for combo in grid]
        return product[: sweep.run_cap] if sweep.run_cap else product
    rng = random.Random(sweep.seed)
    points: list[dict] = []
    seen: set[str] = set()
    cap = sweep.run_cap or 1  # parse_sweep requires run_cap for random sweeps
    for _ in range(cap * 20):  # bounded: a small space yields fewer distinct trials than run_cap
        point = {p.path: p.sample(rng) for p in sweep.parameters}
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

