"""The stateful W&B stand-in (tests/wandb_standin) against the real wandb 0.31 SDK, online: what runs log is kept and
`wandb.Api()` reads it back; every answer the Python SDK parses is checked against wandb's own generated models."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import wandb

from tests.wandb_standin import IMPLEMENTED, Standin
from tests.wandb_standin.validate import generated_operations, validate

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"mode": "online", "x_disable_stats": True, "console": "off", "silent": True}  # online whatever an earlier test left in wandb's process-wide settings


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_standin: Standin) -> Standin:
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    (tmp_path / "home").mkdir()
    (tmp_path / "wandb").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", wandb_standin.url)
    monkeypatch.setenv("WANDB_API_KEY", wandb_standin.api_key)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb_standin


def init(job_type: str, **settings):
    """An online run on the stand-in: host and key passed explicitly, since wandb's process-wide settings keep
    the WANDB_BASE_URL of the first `wandb.setup` in this process (another test's stand-in)."""
    return wandb.init(project="p", job_type=job_type, reinit="create_new", settings=wandb.Settings(
        base_url=os.environ["WANDB_BASE_URL"], api_key=os.environ["WANDB_API_KEY"], **SETTINGS, **settings))


def public_api() -> wandb.Api:
    return wandb.Api(api_key=os.environ["WANDB_API_KEY"], overrides={"base_url": os.environ["WANDB_BASE_URL"]})


def folder(d: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d


def artifact(name: str, type_: str, d: Path) -> wandb.Artifact:
    art = wandb.Artifact(name, type=type_)
    art.add_dir(str(d))
    return art


def b64md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


def all_validated(w: Standin) -> dict[str, int]:
    """Every answer the Python SDK parsed with a generated model parses with it; no field was unknown."""
    checked, _ = validate(list(w.responses))
    assert w.missing_fields == set()
    return checked


@pytest.mark.slow
def test_two_runs_log_use_and_read_back_through_the_public_api(online, tmp_path):
    w = online
    a_files = {"a.txt": b"hello", "sub/b.bin": bytes(range(256))}
    b_files = {"a.txt": b"hello again"}
    run1 = init("prepare-data")
    v0 = run1.log_artifact(artifact("thing", "data", folder(tmp_path / "A", a_files)),
                           aliases=["sha256-aaaa", "candidate"]).wait(30)
    run1.log({"acc": 0.5})
    run1.finish()

    run2 = init("train")
    used = run2.use_artifact("p/thing:candidate")
    assert used.version == "v0" and used.digest == v0.digest
    v1 = run2.log_artifact(artifact("thing", "data", folder(tmp_path / "B", b_files)),
                           aliases=["sha256-bbbb", "candidate"]).wait(30)
    model = run2.log_artifact(artifact("model", "model", folder(tmp_path / "M", {"m.bin": b"weights"}))).wait(30)
    run2.finish()

    api = public_api()
    a0, a1 = api.artifact("p/thing:v0"), api.artifact("p/thing:latest")
    assert (a0.version, a1.version) == ("v0", "v1")
    assert set(a0.aliases) == {"sha256-aaaa"}  # `candidate` and `latest` moved to the newer version
    assert set(a1.aliases) == {"latest", "candidate", "sha256-bbbb"}
    assert api.artifact("p/thing:candidate").version == "v1"
    assert api.artifact("p/thing:sha256-aaaa").digest == v0.digest != v1.digest
    # the manifest and the bytes
    entries = a0.manifest.entries
    assert sorted(entries) == sorted(a_files)
    assert {k: e.digest for k, e in entries.items()} == {k: b64md5(v) for k, v in a_files.items()}
    root = Path(a0.download(root=str(tmp_path / "dl")))
    assert {k: (root / k).read_bytes() for k in a_files} == a_files
    # the edges
    assert a0.logged_by().name == run1.id and a1.logged_by().name == run2.id
    assert [r.name for r in a0.used_by()] == [run2.id] and list(a1.used_by()) == []
    r2 = api.run(f"p/{run2.id}")
    assert r2.job_type == "train" and r2.state == "finished"
    assert [a.name for a in r2.used_artifacts()] == ["thing:v0"]
    assert sorted(a.name for a in r2.logged_artifacts()) == ["model:v0", "thing:v1"]
    r1 = api.run(f"p/{run1.id}")
    assert r1.summary["acc"] == 0.5 and [a.name for a in r1.logged_artifacts()] == ["thing:v0"]

    # an alias saved on one version moves off the other one
    a0.aliases.append("production")
    a0.save()
    assert api.artifact("p/thing:production").version == "v0"
    a1 = api.artifact("p/thing:v1")
    a1.aliases.append("production")
    a1.save()
    assert api.artifact("p/thing:production").version == "v1"
    assert "production" not in api.artifact("p/thing:v0").aliases

    # the same content again is the same version: no v2, the alias lands on v0
    run3 = init("promote")
    again = run3.log_artifact(artifact("thing", "data", folder(tmp_path / "A2", a_files)),
                              aliases=["again"]).wait(30)
    assert again.version == "v0" and again.digest == v0.digest
    # and a link into a registry collection
    run3.link_artifact(api.artifact("p/model:v0"), "wandb-registry-model/mnist", aliases=["production"])
    run3.finish()
    state = w.state()
    versions = state["collections"][f"{w.entity}/p/thing"]["versions"]
    assert [v["version"] for v in versions] == ["v0", "v1"] and "again" in versions[0]["aliases"]
    [(name, linked)] = [(k, c) for k, c in state["collections"].items() if c["kind"] == "portfolio"]
    assert name.endswith("/wandb-registry-model/mnist")
    assert [(v["id"], v["aliases"]) for v in linked["versions"]] == [(model.id, ["latest", "production"])]
    assert state["runs"][f"{w.entity}/p/{run2.id}"]["inputs"] == [f"{w.entity}/p/thing:v0"]

    checked = all_validated(w)
    for op in ("ArtifactMembershipByName", "ArtifactByID", "ArtifactCreatedBy", "ArtifactUsedBy",
               "FetchArtifactManifest", "GetArtifactMembershipFileUrls", "RunInputArtifacts", "RunOutputArtifacts",
               "AddAliases", "UpdateArtifact", "LinkArtifact", "ServerFeaturesQuery"):
        assert checked.get(op), (op, checked)
    assert w.count("CommitArtifact") == 3 and w.count("CreateArtifact") == 4  # the de-duplicated log commits nothing


@pytest.mark.slow
def test_a_finished_run_resumes_and_declares_an_input(online, tmp_path):
    """What `sync` does for a run recorded offline: `resume="must"` on a run the server holds (wandb-core's
    RunResumeStatus), then `use_artifact`; a run the server does not hold is refused."""
    run = init("prepare-data")
    run.log_artifact(artifact("thing", "data", folder(tmp_path / "A", {"a": b"1"}))).wait(30)
    run.finish()
    consumer = init("train")
    consumer.log({"loss": 1.0})
    consumer.finish()
    again = wandb.init(id=consumer.id, project="p", resume="must", reinit="create_new", settings=wandb.Settings(
        base_url=online.url, api_key=online.api_key, **SETTINGS))
    again.use_artifact("p/thing:latest")
    again.finish()
    r = public_api().run(f"p/{consumer.id}")
    assert [a.name for a in r.used_artifacts()] == ["thing:v0"] and r.summary["loss"] == 1.0
    with pytest.raises(wandb.errors.Error, match="does not exist|not been initialized"):
        wandb.init(id="nosuchrun", project="p", resume="must", reinit="create_new", settings=wandb.Settings(
            base_url=online.url, api_key=online.api_key, **SETTINGS))
    assert online.missing_fields == set()


@pytest.mark.slow  # reads wandb's generated models
def test_every_implemented_python_operation_has_its_generated_model_or_is_named_unmodelled():
    """The stand-in claims to answer these Python-SDK operations: each of them exists in wandb's generated
    operations, so its answers are checked by the model (a rename in a new wandb shows here)."""
    gen = generated_operations()
    python_ops = IMPLEMENTED - {"UpsertBucket", "Viewer", "RunResumeStatus", "CreateRunFiles", "CreateArtifact",
                                "CreateArtifactManifest", "CreateArtifactFiles", "CommitArtifact", "UseArtifact",
                                "FetchArtifactDigestAlgorithm", "XXHashDigestsEnabled", "ArtifactManifest",
                                "ArtifactFileURLsByManifestEntries", "FetchOrgEntityFromEntity", "OrgFeatureFlags",
                                "Run"}
    assert sorted(python_ops - set(gen)) == []
    core = subprocess.run(["strings", str(Path(wandb.__file__).parent / "bin" / "wandb-core")],
                          capture_output=True, text=True, timeout=60).stdout
    for op in ("UpsertBucket", "CreateArtifact", "CommitArtifact", "UseArtifact", "CreateArtifactFiles",
               "CreateArtifactManifest", "LinkArtifact", "CreateRunFiles"):
        assert re.search(rf"mutation {op} \(", core), op  # wandb-core still sends these, by these names


def test_an_unimplemented_operation_gets_a_graphql_error_naming_it(online, tmp_path):
    run = init("x")
    run.log_artifact(artifact("thing", "data", folder(tmp_path / "A", {"a": b"1"}))).wait(30)
    run.finish()
    art = public_api().artifact("p/thing:v0")
    with pytest.raises(Exception, match="does not implement operation DeleteArtifact"):
        art.delete()
    assert online.count("DeleteArtifact") == 1
    assert [v["state"] for v in online.state()["collections"][f"{online.entity}/p/thing"]["versions"]] == [
        "COMMITTED"]


@pytest.mark.slow
def test_a_fault_by_name_fails_exactly_that_call(online, tmp_path):
    w = online
    w.fail("CommitArtifact", "graphql-error", nth=2)
    run = init("x")
    first = run.log_artifact(artifact("one", "data", folder(tmp_path / "1", {"a": b"1"})))
    first.wait(30)
    second = run.log_artifact(artifact("two", "data", folder(tmp_path / "2", {"a": b"2"})))
    with pytest.raises(ValueError, match="CommitArtifact failed"):
        second.wait(30)
    third = run.log_artifact(artifact("three", "data", folder(tmp_path / "3", {"a": b"3"})))
    third.wait(30)
    run.finish()
    states = {k.rsplit("/", 1)[1]: [v["state"] for v in c["versions"]] for k, c in w.state()["collections"].items()}
    assert states == {"one": ["COMMITTED"], "two": ["PENDING"], "three": ["COMMITTED"]}
    assert w.count("CommitArtifact") == 3
    assert [s for _, _, op, s in w.requests if op == "CommitArtifact"] == [200, 200, 200]  # GraphQL errors are 200
    # an HTTP 500 once: wandb-core retries that one request, and the version commits
    w.fail("CreateArtifact", "http-500")
    run = init("y")
    run.log_artifact(artifact("four", "data", folder(tmp_path / "4", {"a": b"4"}))).wait(60)
    run.finish()
    assert w.count("CreateArtifact") == 5 and [s for _, _, op, s in w.requests if op == "CreateArtifact"][-2:] == [
        500, 200]


def test_a_wrong_key_is_refused_with_401(online, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with pytest.raises(wandb.errors.Error):
        init("x", init_timeout=20)
    assert online.state()["runs"] == {}
    assert 401 in [s for *_, s in online.requests]


def _post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    import base64

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"api:{key}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


UPSERT = ("mutation UpsertBucket($name: String, $project: String) { upsertBucket(input: {name: $name, "
          "modelName: $project}) { bucket { id name } inserted } }")


@pytest.mark.slow  # a process of its own
def test_the_command_prints_two_lines_serves_faults_and_dumps_its_state(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "tests.wandb_standin", "--state", str(state)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
        assert re.fullmatch(r"WANDB_BASE_URL=http://127\.0\.0\.1:\d+", lines[0]), lines
        assert re.fullmatch(r"WANDB_API_KEY=\S{40,}", lines[1]), lines
        url, key = lines[0].split("=", 1)[1], lines[1].split("=", 1)[1]
        assert _post(f"{url}/graphql", {"query": UPSERT, "variables": {"name": "r1", "project": "p"}}, None)[0] == 401
        status, doc = _post(f"{url}/graphql", {"query": UPSERT, "variables": {"name": "r1", "project": "p"}}, key)
        assert status == 200 and doc["data"]["upsertBucket"]["inserted"] is True
        # a fault over HTTP, for a stand-in in another process
        assert _post(f"{url}/_standin/faults", {"op": "UpsertBucket", "kind": "http-500"}, None)[0] == 200
        assert _post(f"{url}/graphql", {"query": UPSERT, "variables": {"name": "r2", "project": "p"}}, key)[0] == 500
        status, doc = _post(f"{url}/graphql", {"query": "query Nope { nope { id } }"}, key)
        assert status == 200 and "does not implement operation Nope" in doc["errors"][0]["message"]
        with urllib.request.urlopen(f"{url}/_standin/state", timeout=10) as r:
            live = json.loads(r.read())
        with urllib.request.urlopen(f"{url}/_standin/requests", timeout=10) as r:
            assert json.loads(r.read())["UpsertBucket"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(live["runs"]) == ["standin-entity/p/r1"]
    dump = subprocess.run([sys.executable, "-m", "tests.wandb_standin", "--dump", "--state", str(state)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and json.loads(dump.stdout) == live
