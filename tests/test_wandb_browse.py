"""W&B as a user browses it (issue 30, item 13): through W&B's own public API (`wandb.Api().runs(...)`,
`run.history()`, `run.scan_history()`, `api.artifact_types()`, `.collections()`) against the W&B stand-in, what
the tutorial's dashboard shows for a real tiny MNIST flow recorded online: the train run's loss curve with
step = examples seen, its config, and the runs of one flow grouped together, each stage its job type. Every
answer the SDK parsed is checked against wandb's generated models or the stand-in's schema (`validate.py`)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import urllib.request
from pathlib import Path

import pytest
import wandb

from prefect_wandb.store import LineageStore
from tests.helpers import tiny_config, write_mnist
from tests.roundtrip import PROJECT, env_for, run_args
from tests.wandb_inprocess import cli_here
from tests.wandb_standin import IMPLEMENTED, SCHEMA_CHECKED, Standin
from tests.wandb_standin.validate import SCHEMA_OPERATIONS, SchemaMismatch, check_fragments, check_schema, validate

SETTINGS = {"mode": "online", "x_disable_stats": True, "console": "off", "silent": True}
STAGES = {"prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote", "report"}


@pytest.fixture(scope="module")
def standin():
    """One stand-in for the module: wandb's process-wide state keeps the first W&B host a process used."""
    with Standin() as w:
        yield w


def api(w: Standin) -> wandb.Api:
    return wandb.Api(api_key=w.api_key, overrides={"base_url": w.url}, timeout=30)


def checked(w: Standin) -> dict[str, int]:
    """Every answer validated (generated model, generated fragments, the stand-in's schema); no field unknown."""
    done, _ = validate(list(w.responses))
    assert w.missing_fields == set()
    return done


@pytest.fixture
def online_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin: Standin) -> Standin:
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    for d in ("home", "wandb"):
        (tmp_path / d).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))  # wandb-core's run-history cache
    monkeypatch.setenv("WANDB_SILENT", "true")
    return standin


def init(w: Standin, project: str, job_type: str, **kwargs):
    return wandb.init(project=project, job_type=job_type, reinit="create_new", **kwargs,
                      settings=wandb.Settings(base_url=w.url, api_key=w.api_key, **SETTINGS))


@pytest.mark.slow
def test_runs_filters_history_and_artifact_types_read_back_as_logged(online_env, tmp_path):
    """The stand-in's side, on runs logged here: `runs()` filters, order and pages; `history()` (full, by keys,
    sampled), `scan_history()` (all keys, some keys, small pages: wandb-core's own paging), a resumed run's history
    continuing at its offset; artifact types and their collections."""
    w = online_env
    project = "browse"
    made = []
    for i, (job, lr) in enumerate((("train", 0.1), ("train", 0.01), ("evaluate", None))):
        config = {"epochs": 2, "kernels": [16, 32]} | ({"learning_rate": lr} if lr else {})
        run = init(w, project, job, group="flow-a" if i < 2 else "flow-b", config=config, tags=["t"] if i else [])
        if job == "train":
            for b in range(6):
                run.log({"epoch": b // 3, "loss": 1 / (b + 1 + i)}, step=(b + 1) * 32)
            run.log({"note": "no loss here"}, step=7 * 32)  # a row without `loss`
        else:
            run.log({"test_accuracy": 0.9})
            art = wandb.Artifact("metrics", type="metrics")
            with art.new_file("m.json") as f:
                f.write("{}")
            run.log_artifact(art).wait(30)
        run.finish()
        made.append(run.id)
    a = api(w)
    path = f"{w.entity}/{project}"

    runs = list(a.runs(path))
    assert [r.id for r in runs] == made  # creation order, the SDK's default
    assert [(r.group, r.job_type, r.name, r.state) for r in runs] == [
        ("flow-a", "train", r.name, "finished") for r in runs[:2]] + [("flow-b", "evaluate", runs[2].name, "finished")]
    assert [r.id for r in a.runs(path, filters={"group": "flow-a"})] == made[:2]
    assert [r.id for r in a.runs(path, filters={"$and": [{"jobType": "train"}, {"config.learning_rate": {"$lt": 0.05}}]})] \
        == [made[1]]
    assert [r.id for r in a.runs(path, filters={"$or": [{"jobType": "evaluate"}, {"config.learning_rate.value": 0.1}]})] \
        == [made[0], made[2]]
    assert [r.id for r in a.runs(path, filters={"tags": "t"})] == made[1:]
    assert [r.id for r in a.runs(path, filters={"config.learning_rate": {"$exists": False}})] == [made[2]]
    assert [r.id for r in a.runs(path, filters={"group": {"$regex": "^flow-[ab]$"}, "state": {"$in": ["finished"]}})] \
        == made
    assert [r.id for r in a.runs(path, order="-created_at")] == made[::-1]
    assert [r.id for r in a.runs(path, filters={"jobType": "train"}, order="+summary_metrics.loss")] == [made[1], made[0]]
    assert [r.id for r in a.runs(path, per_page=1)] == made  # three pages, W&B's cursors
    assert len(a.runs(path, filters={"group": "flow-a"})) == 2  # runCount
    with pytest.raises(Exception, match="not modelled"):
        list(a.runs(path, filters={"duration": {"$gt": 1}}))

    first = runs[0]
    assert first.config == {"epochs": 2, "kernels": [16, 32], "learning_rate": 0.1}
    assert first.summary["loss"] == pytest.approx(1 / 6) and first.summary["note"] == "no loss here"
    rows = first.history(pandas=False)
    assert [(r["_step"], r.get("epoch"), r.get("loss")) for r in rows] == [
        ((b + 1) * 32, b // 3, pytest.approx(1 / (b + 1))) for b in range(6)] + [(224, None, None)]
    by_key = first.history(keys=["loss"], pandas=False)
    assert [sorted(r) for r in by_key] == [["_step", "loss"]] * 6  # rows holding the key, only the asked keys
    assert [r["_step"] for r in first.history(samples=3, pandas=False)] == [32, 128, 224]  # first and last kept
    scanned = list(first.scan_history())
    assert [r["_step"] for r in scanned] == [32, 64, 96, 128, 160, 192, 224] and scanned[0]["epoch"] == 0
    assert [(r["_step"], r["loss"]) for r in first.scan_history(keys=["loss"], page_size=50)] == [
        (r["_step"], r["loss"]) for r in by_key]
    assert first.lastHistoryStep == 224
    assert first.history(stream="system", pandas=False) == []  # system metrics: off in these runs
    assert [r.config.get("learning_rate") for r in a.runs(path, lazy=False)] == [0.1, 0.01, None]

    # a resumed run appends to its history at the offset W&B holds
    again = wandb.init(id=made[1], project=project, resume="must", reinit="create_new",
                       settings=wandb.Settings(base_url=w.url, api_key=w.api_key, **SETTINGS))
    again.log({"epoch": 2, "loss": 0.01}, step=300)
    again.finish()
    steps = [r["_step"] for r in a.run(f"{path}/{made[1]}").scan_history(keys=["loss"])]
    assert steps == [32, 64, 96, 128, 160, 192, 300]

    types = {t.name: [c.name for c in t.collections()] for t in a.artifact_types(path)}
    assert types == {"metrics": ["metrics"]}
    assert [c.name for c in a.artifact_collections(path, "metrics")] == ["metrics"]

    # api.artifact_collections() of a project without a type: the generated query, sent as the SDK sends it
    from wandb.sdk.artifacts._generated import PROJECT_ARTIFACT_COLLECTIONS_GQL

    req = urllib.request.Request(f"{w.url}/graphql", method="POST", headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"api:{w.api_key}".encode()).decode()}, data=json.dumps({
            "query": PROJECT_ARTIFACT_COLLECTIONS_GQL, "operationName": "ProjectArtifactCollections",
            "variables": {"entity": w.entity, "project": project, "perPage": 10}}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert [e["node"]["name"] for e in doc["data"]["project"]["artifactCollections"]["edges"]] == ["metrics"]

    done = checked(w)
    for op in ("ProjectArtifactTypes", "ArtifactTypeArtifactCollections", "ProjectArtifactCollections",
               "Runs:LightweightRunFragment", *(f"{op}:schema" for op in SCHEMA_OPERATIONS)):
        assert done.get(op), (op, done)


def test_an_answer_the_sdk_would_misread_is_caught_by_the_checks():
    """The checks bite: a null where W&B's schema has a non-null list, a JSONString that is not JSON, an Int that
    is a string, a run node missing a field the generated LightweightRunFragment requires."""
    from wandb.apis.public.runs import _create_runs_query

    history = ("query RunFullHistory($project: String!, $entity: String!, $name: String!, $samples: Int) "
               "{ project(name: $project, entityName: $entity) { run(name: $name) { history(samples: $samples) } } }")
    check_schema(history, {"project": {"run": {"history": ['{"_step": 1}']}}})
    with pytest.raises(SchemaMismatch, match="non-null"):
        check_schema(history, {"project": {"run": {"history": None}}})
    with pytest.raises(SchemaMismatch, match="not a valid String"):
        check_schema(history, {"project": {"run": {"history": [{"_step": 1}]}}})
    full = ("query Run($project: String!, $entity: String!, $name: String!) { project(name: $project, "
            "entityName: $entity) { run(name: $name) { config historyLineCount } } }")
    with pytest.raises(SchemaMismatch, match="not a valid JSONString"):
        check_schema(full, {"project": {"run": {"config": "{not json", "historyLineCount": 1}}})
    with pytest.raises(SchemaMismatch, match="not a valid Int"):
        check_schema(full, {"project": {"run": {"config": "{}", "historyLineCount": "1"}}})
    with pytest.raises(SchemaMismatch, match="does not fit"):
        check_schema(full.replace("historyLineCount", "noSuchField"), {})
    runs = _create_runs_query(lazy=True)
    node = {"id": "UnVuOjE=", "tags": [], "name": "r1", "displayName": "r1", "sweepName": None, "state": "finished",
            "group": "g", "jobType": "train", "commit": None, "readOnly": False, "createdAt": "2026-12-06T00:00:00",
            "heartbeatAt": None, "description": None, "notes": None, "historyLineCount": 0,
            "user": {"name": "u", "username": "u"}, "projectId": "1"}
    page = {"project": {"internalId": "1", "runCount": 1, "readOnly": False, "runs": {
        "edges": [{"node": node, "cursor": "1"}], "pageInfo": {"endCursor": "1", "hasNextPage": False}}}}
    assert check_fragments(runs, page) == ["LightweightRunFragment"]
    check_schema(runs, page)
    del node["createdAt"]
    with pytest.raises(Exception, match="createdAt"):
        check_fragments(runs, page)


def test_what_each_answered_operation_is_called_in_the_installed_wandb():
    """The browse operations the stand-in answers are the ones this wandb sends, by these names: the public API's
    hand-written queries in its source, wandb-core's in its binary (a rename in a new wandb shows here)."""
    import subprocess

    root = Path(wandb.__file__).parent
    source = (root / "apis" / "public" / "runs.py").read_text()
    core = subprocess.run(["strings", str(root / "bin" / "wandb-core")], capture_output=True, text=True,
                          timeout=60).stdout
    assert SCHEMA_CHECKED | {"Run"} == SCHEMA_OPERATIONS and not SCHEMA_CHECKED & IMPLEMENTED
    for op in SCHEMA_CHECKED:
        assert re.search(rf"query {op}\s*\(", source) or re.search(rf"query {op} \(", core), op


@pytest.mark.slow
def test_the_dashboard_of_a_tiny_mnist_flow_recorded_online(prefect_server, standin, tmp_path):
    """The tutorial's dashboard, read through wandb.Api(): the flow's runs in one group `flow-<flow run id>`, each
    stage its job type; the train run's config and its loss curve, logged every 25 batches at step = examples
    seen, `{"epoch", "loss"}` as the tutorial logs them, matching what the lineage store recorded."""
    w = standin
    src = tmp_path / "src"
    write_mnist(src)  # 120 train images: batches of 4, 30 a epoch, two epochs: the loss is logged twice
    expect = tiny_config(tmp_path, src, train={"epochs": 2, "batch_size": 4}).train
    env = env_for(tmp_path, w)
    proc = cli_here(env, *run_args(tmp_path, src, "online", "--epochs", "2", "--batch-size", "4"))  # in this process
    assert proc.returncode == 0, proc.stderr[-4000:]
    group = re.search(r"W&B: online at \S+/groups/(flow-[0-9a-f-]+)", proc.stdout)
    assert group, proc.stdout[-2000:]
    store = LineageStore(str(tmp_path / "lineage.db"))
    recorded = {r.run_id: r for r in store.runs()}
    [flow_run_id] = {r.flow_run_id for r in recorded.values()}
    assert group.group(1) == f"flow-{flow_run_id}"

    a = api(w)
    path = f"{w.entity}/{PROJECT}"
    runs = list(a.runs(path, filters={"group": group.group(1)}))
    assert sorted(r.job_type for r in runs) == sorted(STAGES)
    assert {r.id: r.job_type for r in runs} == {k: r.job_type for k, r in recorded.items()}
    for r in runs:
        assert (r.group, r.state, r.name) == (group.group(1), "finished", f"{r.job_type}-{r.id[:8]}")
    [train] = [r for r in a.runs(path, filters={"group": group.group(1), "jobType": "train"})]

    # the config panel: the tutorial's keys, as the flow was configured
    config = train.config
    assert {k: config[k] for k in ("epochs", "batch_size", "learning_rate", "kernels", "classes")} == {
        "epochs": 2, "batch_size": 4, "learning_rate": expect.learning_rate, "kernels": list(expect.kernels),
        "classes": expect.classes}
    assert (config["dataset"], config["architecture"]) == ("MNIST", "CNN")
    assert config["lineage"]["flow_run_id"] == flow_run_id

    # the loss chart: every 25th batch ((batch + 1) % 25 == 0, as the tutorial), step = examples seen
    per_epoch = math.ceil(120 / 4)
    want = [(b * 4, (b - 1) // per_epoch) for b in range(1, 2 * per_epoch + 1) if (b + 1) % 25 == 0]
    assert want == [(96, 0), (196, 1)]
    curve = train.history(keys=["epoch", "loss"], pandas=False)
    assert [(r["_step"], r["epoch"]) for r in curve] == want
    points = recorded[train.id].summary["loss_points"]  # what the store recorded of the same run
    assert [(s, e) for s, e, _ in points] == want
    assert [r["loss"] for r in curve] == [pytest.approx(loss, abs=1e-5) for _, _, loss in points]
    scanned = list(train.scan_history())
    assert [(r["_step"], r["epoch"], r["loss"]) for r in scanned] == [
        (r["_step"], r["epoch"], r["loss"]) for r in curve]
    assert all(set(r) == {"_step", "_runtime", "_timestamp", "epoch", "loss"} for r in scanned)
    assert train.summary["loss"] == curve[-1]["loss"] and train.lastHistoryStep == 196
    assert train.summary["examples_seen"] == 240

    # the evaluate run's panel and the artifacts of the project, by type
    [evaluate] = [r for r in runs if r.job_type == "evaluate"]
    assert evaluate.summary["test_accuracy"] == recorded[evaluate.id].summary["test_accuracy"]
    types = {t.name: sorted(c.name for c in t.collections()) for t in a.artifact_types(path)}
    for art in store.artifacts():
        assert art.name in types.get(art.type, []), (art.name, art.type, types)

    done = checked(w)
    for op in ("Runs:LightweightRunFragment", "Runs:schema", "Run:schema", "RunSampledHistory:schema",
               "HistoryPage:schema", "RunParquetHistory:schema", "ProjectArtifactTypes",
               "ArtifactTypeArtifactCollections"):
        assert done.get(op), (op, done)
