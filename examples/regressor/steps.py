"""The regressor's config and its stages as pure functions (numpy, onnx; no Prefect, no W&B). The flow's stages call
them and `REBUILDERS` hands them to `reproduce`: a rebuild function takes a `Replay` (job_type, config, inputs:
artifact type -> folder, metadata, summary, env) and writes the output's files into an empty folder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prefect_wandb import LineageSettings, WandbSettings, manifest, manifest_digest, write_json

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["area_100m2", "rooms", "age_decades", "distance_km"]
OPSET, INPUT, OUTPUT = 17, "features", "price"


class RegressorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int = Field(400, ge=40, le=10_000_000, description="rows of the synthetic dataset (3/4 train)")
    seed: int = Field(0, ge=0, description="seeds the dataset")
    degree: int = Field(2, ge=1, le=4, description="polynomial degree of the features")
    alpha: float = Field(1.0, ge=0, description="ridge penalty")
    margin: float = Field(0.0, ge=0, description="RMSE by which a candidate must beat production")
    atol: float = Field(1e-3, gt=0, description="max |onnxruntime - numpy| prediction difference")
    force: bool = Field(False, description="fit even when nothing changed")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field("auto", description="W&B mode")
    root: Path = Field(Path("regressor-runs"), description="where lineage.db and artifacts/ go")
    sign_key: Path | None = Field(None, description="EC private key to sign the ONNX file (else $REGRESSOR_SIGN_KEY)")

    def lineage(self) -> LineageSettings:
        return LineageSettings(store=self.root / "lineage.db", artifacts=self.root / "artifacts", code_root=REPO,
                               wandb=WandbSettings(project="regressor-lineage", mode=self.wandb_mode)).resolved()


def fingerprint(config: dict) -> dict:
    """The slice of the config that decides the weights (the skip rule's 'unchanged')."""
    return {"alpha": config["alpha"], "degree": config["degree"], "seed": config["seed"], "n_rows": config["rows"]}


def generate(config: dict, out: Path) -> dict:
    """Synthetic house prices (in 100k): a nonlinear function of four features plus noise, seeded; 3/4 train."""
    rng, n = np.random.default_rng(config["seed"]), config["rows"]
    x = np.column_stack([rng.gamma(4.0, 0.3, n), rng.integers(1, 7, n), rng.uniform(0, 8, n), rng.exponential(6, n)])
    price = (0.8 + 1.6 * x[:, 0] + 0.25 * x[:, 1] - 0.02 * x[:, 2] ** 2 + 2.0 * np.exp(-x[:, 3] / 4)
             + 0.15 * x[:, 0] * x[:, 1] + rng.normal(0, 0.15, n))
    rows, cut = np.column_stack([x, price]), n * 3 // 4
    np.save(out / "train.npy", rows[:cut])
    np.save(out / "test.npy", rows[cut:])
    write_json(out / "dataset.json", meta := {"columns": COLUMNS, "target": "price_100k", "rows": n,
                                              "seed": config["seed"], "sizes": {"train": cut, "test": n - cut}})
    return meta


def split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.load(Path(folder) / f"{name}.npy")
    return rows[:, :-1], rows[:, -1]


def load(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def design(x: np.ndarray, t: dict) -> np.ndarray:
    """Standardise, then every monomial of degree 1..d: prod_i z_i ** e_ti (as the ONNX graph computes it)."""
    z = (x - np.asarray(t["means"])) / np.asarray(t["stds"])
    return (z[:, None, :] ** np.asarray(t["exponents"], dtype=float)[None]).prod(axis=2)


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    return design(x, model["transform"]) @ np.asarray(model["weights"]) + model["intercept"]


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
    pc = p - p.mean(axis=0)
    w = np.linalg.solve(pc.T @ pc + replay.config["alpha"] * np.eye(p.shape[1]), pc.T @ (y - y.mean()))
    write_json(out / "model.json", {"transform": t, "weights": w.tolist(), "intercept": float(y.mean() - p.mean(
        axis=0) @ w), "fingerprint": fingerprint(replay.config)})


def evaluate(replay, out: Path) -> None:
    """RMSE (the gate's metric), MAE and R^2 on the test split."""
    x, y = split(replay.inputs["dataset"], "test")
    err = predict(load(replay.inputs["model"], "model.json"), x) - y
    write_json(out / "metrics.json", {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.abs(err).mean()),
                                      "r2": float(1 - np.sum(err ** 2) / np.sum((y - y.mean()) ** 2)), "n_test": len(y)})


def export_onnx(replay, out: Path) -> None:
    """Transform and model as one graph, float32: (x - means) / stds -> ** exponents -> product per term -> matmul
    + intercept. Its metadata_props name the model's digest (a function of the input: reproducible)."""
    from onnx import TensorProto, helper, numpy_helper

    m = load(replay.inputs["model"], "model.json")
    t, k = m["transform"], len(m["transform"]["means"])
    node = helper.make_node
    nodes = [node("Sub", [INPUT, "means"], ["c"]), node("Div", ["c", "stds"], ["z"]),
             node("Unsqueeze", ["z", "one"], ["z3"]), node("Pow", ["z3", "exponents"], ["p"]),
             node("ReduceProd", ["p"], ["terms"], axes=[2], keepdims=0),
             node("MatMul", ["terms", "weights"], ["lin"]), node("Add", ["lin", "intercept"], [OUTPUT])]
    values = {"means": t["means"], "stds": t["stds"], "exponents": np.reshape(t["exponents"], (-1, k)),
              "weights": np.reshape(m["weights"], (-1, 1)), "intercept": [m["intercept"]]}
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in values.items()]
    graph = helper.make_graph(nodes, "ridge", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["n", k])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", 1])],
                              inits + [numpy_helper.from_array(np.asarray([1], dtype=np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    helper.set_model_props(model, {"model_digest": manifest_digest(manifest(replay.inputs["model"])),
                                   "columns": ",".join(t["columns"]), "output": "price_100k"})
    (out / "model.onnx").write_bytes(model.SerializeToString())


# job type -> rebuild function, for `prefect_wandb.reproduce` (its `Rebuild` contract)
REBUILDERS = {"features": features, "fit": fit, "evaluate": evaluate, "export-onnx": export_onnx}
