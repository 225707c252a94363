"""The regressor's stages as pure functions of their inputs' folders and the recorded config (numpy, onnx; no
Prefect, no W&B): the flow's stages call them, and `REBUILDERS` hands them to `reproduce`, so a reproduction is
the stage's own code. A rebuild function takes a `Replay` (job_type, config, inputs: artifact type -> folder,
metadata, summary, env) and writes the output's files into an empty folder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from prefect_wandb import manifest, manifest_digest, write_json

COLUMNS = ["area_100m2", "rooms", "age_decades", "distance_km"]
OPSET, INPUT, OUTPUT = 17, "features", "price"


def fingerprint(config: dict) -> dict:
    """The slice of the config that decides the weights (the skip rule's 'unchanged')."""
    return {"alpha": config["alpha"], "degree": config["degree"], "seed": config["seed"], "n_rows": config["rows"]}


def generate(config: dict, out: Path) -> dict:
    """Synthetic house prices (in 100k): a nonlinear function of four features plus noise, seeded; 3/4 train."""
    rng = np.random.default_rng(config["seed"])
    n = config["rows"]
    x = np.column_stack([rng.gamma(4.0, 0.3, n), rng.integers(1, 7, n).astype(float), rng.uniform(0, 8, n),
                         rng.exponential(6.0, n)])
    price = (0.8 + 1.6 * x[:, 0] + 0.25 * x[:, 1] - 0.02 * x[:, 2] ** 2 + 2.0 * np.exp(-x[:, 3] / 4)
             + 0.15 * x[:, 0] * x[:, 1] + rng.normal(0, 0.15, n))
    rows, cut = np.column_stack([x, price]), n * 3 // 4
    np.save(out / "train.npy", rows[:cut])
    np.save(out / "test.npy", rows[cut:])
    meta = {"columns": COLUMNS, "target": "price_100k", "rows": n, "seed": config["seed"],
            "sizes": {"train": cut, "test": n - cut}}
    write_json(out / "dataset.json", meta)
    return meta


def split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.load(Path(folder) / f"{name}.npy")
    return rows[:, :-1], rows[:, -1]


def design(x: np.ndarray, t: dict) -> np.ndarray:
    """Standardise, then every monomial of degree 1..d: prod_i z_i ** e_ti (the ONNX graph computes the same)."""
    z = (x - np.asarray(t["means"])) / np.asarray(t["stds"])
    return (z[:, None, :] ** np.asarray(t["exponents"], dtype=float)[None]).prod(axis=2)


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    return design(x, model["transform"]) @ np.asarray(model["weights"]) + model["intercept"]


def load(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def features(replay, out: Path) -> None:
    """The transform: the train split's means and stds, and the exponents of each polynomial term."""
    x, _ = split(replay.inputs["dataset"], "train")
    k, d = x.shape[1], replay.config["degree"]
    exps = [[c.count(i) for i in range(k)] for n in range(1, d + 1)
            for c in itertools.combinations_with_replacement(range(k), n)]
    write_json(out / "transform.json", {"columns": COLUMNS, "degree": d, "exponents": exps,
                                        "means": x.mean(axis=0).tolist(), "stds": x.std(axis=0).tolist()})


def fit(replay, out: Path) -> None:
    """Closed-form ridge regression on the transformed train split (the intercept is not penalised)."""
    t = load(replay.inputs["features"], "transform.json")
    x, y = split(replay.inputs["dataset"], "train")
    p = design(x, t)
    pm, ym = p.mean(axis=0), y.mean()
    pc = p - pm
    w = np.linalg.solve(pc.T @ pc + replay.config["alpha"] * np.eye(p.shape[1]), pc.T @ (y - ym))
    write_json(out / "model.json", {"transform": t, "weights": w.tolist(), "intercept": float(ym - pm @ w),
                                    "fingerprint": fingerprint(replay.config)})


def evaluate(replay, out: Path) -> None:
    """RMSE, MAE and R^2 of the model on the test split."""
    x, y = split(replay.inputs["dataset"], "test")
    err = predict(load(replay.inputs["model"], "model.json"), x) - y
    write_json(out / "metrics.json", {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.abs(err).mean()),
                                      "r2": float(1 - np.sum(err ** 2) / np.sum((y - y.mean()) ** 2)),
                                      "n_test": len(y)})


def export_onnx(replay, out: Path) -> None:
    """The transform and the linear model as one ONNX graph: (x - means) / stds -> pow by the term exponents ->
    product per term -> matmul + intercept. float32 in, float32 out."""
    from onnx import TensorProto, helper, numpy_helper

    m = load(replay.inputs["model"], "model.json")
    t = m["transform"]
    k = len(t["means"])

    def const(name, values, shape=None):
        return numpy_helper.from_array(np.asarray(values, dtype=np.float32).reshape(shape or -1), name)
    nodes = [helper.make_node("Sub", [INPUT, "means"], ["centred"]), helper.make_node("Div", ["centred", "stds"], ["z"]),
             helper.make_node("Unsqueeze", ["z", "axis1"], ["z3"]), helper.make_node("Pow", ["z3", "exponents"], ["p"]),
             helper.make_node("ReduceProd", ["p"], ["terms"], axes=[2], keepdims=0),
             helper.make_node("MatMul", ["terms", "weights"], ["linear"]),
             helper.make_node("Add", ["linear", "intercept"], [OUTPUT])]
    inits = [const("means", t["means"]), const("stds", t["stds"]), const("exponents", t["exponents"], (-1, k)),
             const("weights", m["weights"], (-1, 1)), const("intercept", [m["intercept"]]),
             numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis1")]
    graph = helper.make_graph(nodes, "ridge", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                              producer_name="examples.regressor")
    helper.set_model_props(model, {"model_digest": manifest_digest(manifest(replay.inputs["model"])),
                                   "columns": ",".join(t["columns"]), "output": "price_100k"})
    (out / "model.onnx").write_bytes(model.SerializeToString())


# job type -> rebuild function, for `prefect_wandb.reproduce` (its `Rebuild` contract)
REBUILDERS = {"features": features, "fit": fit, "evaluate": evaluate, "export-onnx": export_onnx}
