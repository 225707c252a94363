"""Artifacts in S3 (`prefect_wandb/artifact_files.py`), on a real SeaweedFS server (`tests/servers.py`): two stages
of the library's public API with `artifacts=s3://bucket/team` record S3 URLs whose objects hold the recorded
sha256s at content-addressed keys; a second worker with an empty cache reads a committed version (downloaded,
verified) and audits it; a tampered object is refused on download; the server stopped mid-upload fails the stage
in one line and commits nothing; gc removes the upload no record claims and keeps the claimed ones; keys in the
URL and other schemes are refused at the door; no secret key in anything the run wrote; refused credentials are one
line naming the URL for every S3 operation; a differing object is uploaded again, a folder changed after its manifest
refused; a cache copy missing a file is fetched again, an object missing in S3 refused; a record's URL or file path
that leaves the cache is refused before anything is written. wandb offline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from prefect_wandb import DigestMismatch, LineageSettings, LineageStore, WandbSettings, local_folder, open_stage
from prefect_wandb.artifact_files import CACHE_ENV, RemoteArtifactsError, cache_root
from prefect_wandb.cli import main as ops_main
from prefect_wandb.exit_codes import Exit
from tests.helpers import fit_line, prepare_table, use_offline_wandb


def _settings(root: Path, url: str) -> LineageSettings:
    return LineageSettings(store=root / "lineage.db", artifacts=url, code_root=root,
                           wandb=WandbSettings(mode="offline", dir=root / "wandb"))


def _key(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def _get(s3, url: str) -> bytes:
    bucket, key = _key(url)
    c = s3.client()
    try:
        return c.get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        c.close()


def _put(s3, url: str, body: bytes) -> None:
    bucket, key = _key(url)
    c = s3.client()
    try:
        c.put_object(Bucket=bucket, Key=key, Body=body)
    finally:
        c.close()


@pytest.fixture(scope="module")
def s3run(s3, tmp_path_factory):
    """One run of two stages (prepare -> fit) with its artifacts in a fresh bucket's `team/` prefix, wandb
    offline, the cache of "worker 1" in its own folder: the store, the URL, the settings, the refs."""
    root = tmp_path_factory.mktemp("s3run")
    url = s3.bucket(f"run-{root.name[-8:].lower().replace('_', '-')}x") + "/team"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        mp.setenv(CACHE_ENV, str(root / "cache1"))
        use_offline_wandb(mp, root / "wandb")
        settings = _settings(root, url)
        data = prepare_table(settings)
        model = fit_line(settings, data)
        yield {"root": root, "url": url, "settings": settings, "data": data, "model": model, "mp": mp}


def test_every_recorded_version_is_an_s3_url_whose_objects_hold_the_recorded_sha256(s3, s3run):
    store = LineageStore(s3run["settings"].store)
    arts = store.artifacts()
    assert {a.type for a in arts} == {"dataset", "model"}
    for a in arts:
        assert a.path == f"{s3run['url']}/{a.type}/{a.name}/{a.digest[:16]}", a.path
        for f in a.files:
            body = _get(s3, f"{a.path}/{f.relpath}")
            assert hashlib.sha256(body).hexdigest() == f.sha256 and len(body) == f.size
        # the stage staged and finalized into worker 1's cache, with the layout of an artifacts folder
        assert local_folder(a.path) == s3run["root"] / "cache1" / _key(a.path)[0] / _key(a.path)[1]
        assert (local_folder(a.path) / a.files[0].relpath).is_file()
    assert s3run["model"].path.startswith("s3://") and s3run["data"].path.startswith("s3://")
    assert not (s3run["root"] / "cache1" / _key(s3run["url"])[0] / "team" / ".staging").exists() or not any(
        (s3run["root"] / "cache1" / _key(s3run["url"])[0] / "team" / ".staging").iterdir())


def test_a_second_worker_with_an_empty_cache_downloads_verifies_and_audits_a_committed_version(
        s3run, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(s3run["root"] / "cache2"))
    settings, model = s3run["settings"], s3run["model"]
    with open_stage(settings, "evaluate", config={}) as stage:
        folder = stage.use(model)
        assert folder.is_relative_to(s3run["root"] / "cache2")
        assert json.loads((folder / "model.json").read_text())["rows"] == 2
        out = stage.staging("score")
        (out / "score.json").write_text('{"score": 1}\n')
        stage.produce("score", "metrics", out)
    assert stage.outputs["metrics"].path.startswith(s3run["url"] + "/metrics/")
    # a cache copy changed since (same size, other bytes): refused by sha256, fetched again from S3
    cached = folder / "model.json"
    text = cached.read_text()
    cached.write_text(text.replace("0.1", "0.2"))
    with open_stage(settings, "evaluate", config={}) as stage:
        assert (stage.use(model) / "model.json").read_text() == text
    # the same content again: verified in S3, not uploaded again, the same URL
    import prefect_wandb.artifact_files as af

    fs, puts = af._fs(), []  # the process's filesystem, handed to every caller: patched for this test only
    put = fs.put_file
    monkeypatch.setattr(fs, "put_file", lambda *a, **kw: (puts.append(a[1]), put(*a, **kw)))
    monkeypatch.setattr(af, "_fs", lambda: fs)
    again = fit_line(settings, s3run["data"])
    assert again.digest == model.digest and again.path == model.path and puts == []
    # audit from this worker: every file of the model's lineage fetched (the dataset too) and verified
    code = ops_main(["audit", model.label, "--lineage-db", str(settings.store)])
    out_text = capsys.readouterr().out
    assert code == Exit.OK, out_text
    assert (cache_root(s3run["data"].path) / "rows.csv").is_file()


def test_a_tampered_object_is_refused_by_sha256_on_download_in_one_line(s3, s3run, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(s3run["root"] / "cache3"))
    data = s3run["data"]
    obj = f"{data.path}/rows.csv"
    original = _get(s3, obj)
    _put(s3, obj, original.replace(b"3,4", b"3,5"))
    try:
        with pytest.raises(DigestMismatch) as e, open_stage(s3run["settings"], "fit", config={}) as stage:
            stage.use(data)
        assert "\n" not in str(e.value) and obj in str(e.value) and "does not match the recorded" in str(e.value)
        assert not cache_root(data.path).exists()  # nothing unverified is left in the cache
        store = LineageStore(s3run["settings"].store)
        assert store.runs()[-1].status == "failed"
        # the audit from an empty cache says so (the object's sha256), and fails, without a traceback
        capsys.readouterr()
        assert ops_main(["audit", data.label, "--lineage-db", str(s3run["settings"].store)]) == Exit.VERIFY_FAILED
        out, err = capsys.readouterr()
        assert "does not match the recorded" in out and "Traceback" not in out + err, out + err
    finally:
        _put(s3, obj, original)


def test_the_server_stopped_mid_upload_fails_the_stage_in_one_line_and_commits_nothing(s3, s3run, monkeypatch):
    import prefect_wandb.artifact_files as af

    fs = af._fs()  # the process's filesystem, handed to every caller: patched for this test only
    put = fs.put_file

    def put_file(*a, **kw):  # the first object of the upload goes through, then the server is gone
        put(*a, **kw)
        if s3.running:
            s3.stop()

    monkeypatch.setattr(fs, "put_file", put_file)
    monkeypatch.setattr(af, "_fs", lambda: fs)
    store = LineageStore(s3run["settings"].store)
    try:
        with pytest.raises(RemoteArtifactsError) as e:
            prepare_table(s3run["settings"], rows="x,y\n9,9\n")
    finally:
        if not s3.running:
            s3.start()
    assert str(e.value).startswith("uploading s3://") and "nothing was recorded" in str(e.value)
    assert "\n" not in str(e.value)
    run = store.runs()[-1]
    assert run.status == "failed" and "uploading" in (run.error or "")
    assert [a.type for a in store.artifacts()].count("dataset") == 1  # only the first run's


def test_gc_removes_an_unclaimed_upload_and_a_deleted_version_and_keeps_the_claimed_ones(s3, s3run, capsys):
    url, store_path = s3run["url"], s3run["settings"].store
    stray = f"{url}/dataset/table/{'f' * 16}"
    _put(s3, f"{stray}/rows.csv", b"an upload whose commit never came\n")
    with open_stage(s3run["settings"], "scribble", config={}) as stage:  # no model's lineage: gc's to remove
        out = stage.staging("scratch")
        (out / "s.txt").write_text("scratch\n")
        stage.produce("scratch", "scratch", out)
    scratch = stage.outputs["scratch"]
    assert (local_folder(scratch.path) / "s.txt").is_file()
    args = ["gc", "--lineage-db", str(store_path), "--artifacts-dir", url, "--json"]
    assert ops_main(args) == Exit.OK
    plan = json.loads(capsys.readouterr().out)
    assert stray in [r["path"] for r in plan["removals"] if r["kind"] == "unrecorded-upload"]
    assert ops_main([*args, "--apply"]) == Exit.OK
    done = json.loads(capsys.readouterr().out)
    assert stray in done["removed"] and scratch.path in done["removed"], done
    assert not local_folder(scratch.path).exists()  # its cache copy went with it
    deleted = LineageStore(store_path).deletions()
    assert [LineageStore(store_path).artifact(i).label for i in deleted] == [scratch.label]
    c = s3.client()
    try:
        bucket, key = _key(url)
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=key + "/").get("Contents", [])]
    finally:
        c.close()
    assert not any("f" * 16 in k or f"/scratch/{scratch.digest[:16]}/" in k for k in keys)
    for a in LineageStore(store_path).artifacts():  # every claimed version stays, in S3
        if a.artifact_id in deleted:
            continue
        assert all(f"{_key(a.path)[1]}/{f.relpath}" in keys for f in a.files), a.label


def test_keys_in_the_url_and_other_schemes_are_refused_at_the_door_in_one_line(tmp_path, capsys):
    secret = "wJalrXUtnFEMI/K7MDENG"
    LineageStore(tmp_path / "l.db")
    for value, words in ((f"s3://AKIAEXAMPLE:{secret}@bucket/team", "put keys in AWS_ACCESS_KEY_ID"),
                         ("ftp://host/x", "is not an artifacts location"), ("gs://bucket/x", "scheme gs://"),
                         ("http://example.com/a", "scheme http://"), ("s3://Bad_Bucket/x", "not an S3 bucket name"),
                         ("s3://bucket/team?versionId=3", "no query, fragment, spaces"),
                         ("s3://bucket/my team", "no query, fragment, spaces"),
                         ("s3://bucket/team#top", "no query, fragment, spaces")):
        with pytest.raises(ValueError) as e:
            LineageSettings(artifacts=value)
        text = str(e.value)
        assert "artifacts: " in text and words in text and secret not in text, text
        code = ops_main(["gc", "--lineage-db", str(tmp_path / "l.db"), "--artifacts-dir", value])
        err = capsys.readouterr().err
        assert code == Exit.USAGE and err.count("\n") == 1 and secret not in err, err


def test_a_missing_bucket_is_named_in_one_line_before_the_stage_starts(s3, s3run, monkeypatch):
    root = s3run["root"]
    settings = _settings(root, "s3://no-such-bucket-here/team")
    runs = len(LineageStore(s3run["settings"].store).runs())
    with pytest.raises(RemoteArtifactsError, match=r"^artifacts: s3://no-such-bucket-here/team: no bucket") as e:
        prepare_table(settings)
    assert "\n" not in str(e.value)
    assert len(LineageStore(s3run["settings"].store).runs()) == runs  # no run started


def test_no_secret_key_in_anything_the_run_wrote(s3, s3run):
    secret = s3.secret_key.encode()
    written = [p for p in s3run["root"].rglob("*") if p.is_file()]
    assert any(p.name == "lineage.db" for p in written) and any("wandb" in p.parts for p in written)
    assert [str(p) for p in written if secret in p.read_bytes()] == []


def test_the_mnist_pipeline_with_its_artifacts_in_s3_records_urls_audits_and_writes_no_key(
        prefect_server, s3, s3_bucket, wandb_offline, tiny_mnist, tmp_path, monkeypatch, capsys):
    from mnist_pipeline.cli.main import main as mnist_main
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline as pipeline
    from tests.helpers import tiny_config

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    url = f"{s3_bucket}/mnist"
    cfg = tiny_config(tmp_path, tiny_mnist, artifacts_dir=url, train={"watch": False})
    state = pipeline(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    assert state.result().promotion.decision == "promoted"
    store = LineageStore(tmp_path / "lineage.db")
    arts = store.artifacts()
    assert {"dataset", "model", "onnx", "metrics", "report"} <= {a.type for a in arts}
    for a in arts:
        assert a.path == f"{url}/{a.type}/{a.name}/{a.digest[:16]}", a.path
        for f in a.files:
            assert hashlib.sha256(_get(s3, f"{a.path}/{f.relpath}")).hexdigest() == f.sha256
    # checkpoints and staging in the cache, never in S3 or beside the config's URL
    assert not (tmp_path / "art").exists() and not any("s3:" in p.name for p in tmp_path.rglob("*"))
    # another host's cache: the audit downloads and verifies every file of the production model's lineage
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-2"))
    capsys.readouterr()
    assert mnist_main(["audit", "convnet:production", "--lineage-db", str(tmp_path / "lineage.db")]) == Exit.OK
    assert "VERIFIED" in capsys.readouterr().out
    # a third host, its cache empty: the unchanged rerun finds the dataset and model in S3 (verified) and skips
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-3"))
    again = pipeline(config=cfg, return_state=True)
    assert again.is_completed() and again.result().status == "skipped", again.result()
    assert len(store.artifacts()) == len(arts)
    secret = s3.secret_key.encode()
    assert [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_bytes()] == []
    # an unreachable bucket: the CLI says so in one line before any work
    capsys.readouterr()
    assert mnist_main(["run", "--artifacts-dir", "s3://no-such-bucket-here/x", "--source", "synthetic",
                       "--lineage-db", str(tmp_path / "other.db"), "--root", str(tmp_path / "d2")]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bucket 'no-such-bucket-here'" in err, err


def test_an_s3_location_is_normalised_and_its_cache_is_a_folder_every_host_derives_alike(tmp_path, monkeypatch):
    assert LineageSettings(artifacts="s3://bucket/team/").artifacts == "s3://bucket/team"
    assert LineageSettings(artifacts="s3://bucket//a/b").artifacts == "s3://bucket/a/b"
    assert LineageSettings(artifacts="runs/art").artifacts == Path("runs/art")
    with pytest.raises(ValueError, match="'.' and '..' are not prefix segments"):
        LineageSettings(artifacts="s3://bucket/a/../b")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = LineageSettings(artifacts="s3://bucket/team")
    assert s.local_artifacts() == (tmp_path / "xdg" / "prefect-wandb" / "artifacts" / "bucket" / "team").resolve()
    assert s.remote_artifacts() == "s3://bucket/team" and LineageSettings().remote_artifacts() is None
    version = "s3://bucket/team/model/m/0123456789abcdef"
    assert local_folder(version) == s.local_artifacts() / "model" / "m" / "0123456789abcdef"  # no files: no fetch
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert s.local_artifacts() == (tmp_path / "c" / "bucket" / "team").resolve()
    # JSON (a Prefect parameter, a block) keeps the URL as it is, and reads back the same settings
    assert json.loads(s.model_dump_json())["artifacts"] == "s3://bucket/team"
    assert LineageSettings.model_validate_json(s.model_dump_json()) == s
    assert local_folder(tmp_path / "here") == tmp_path / "here"  # a folder is returned as it is


def test_an_artifacts_location_that_is_neither_text_nor_a_path_or_is_blank_is_refused_naming_the_field():
    from prefect_wandb.artifact_files import artifacts_location

    with pytest.raises(ValueError, match="artifacts: a folder or an s3://bucket/prefix URL, not int"):
        LineageSettings(artifacts=5)
    for blank in ("", "   "):
        with pytest.raises(ValueError, match="--artifacts-dir: an empty location"):
            artifacts_location(blank, "--artifacts-dir")


def _record(s3run, which: str):
    """The store's record (with its files) of s3run's `which` ("data", "model")."""
    ref = s3run[which]
    return LineageStore(s3run["settings"].store).require_artifact(ref.name, ref.digest)


# a loopback port nothing listens on: nothing below may reach an S3 server
_NO_S3 = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
          "AWS_SECRET_ACCESS_KEY": "not/a/real/secret", "AWS_DEFAULT_REGION": "us-east-1"}


def test_a_recorded_url_or_file_path_that_leaves_the_cache_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """A store's record is read as it is (a hand-edited or foreign store): a version URL with '..' in it, or a file
    path that climbs out of its version folder, is refused in one line before anything is fetched or written."""
    from prefect_wandb import LocationError
    from prefect_wandb.records import FileRecord

    for k, v in _NO_S3.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sha = "0" * 64
    with pytest.raises(LocationError, match=r"^s3://bucket-x/team/\.\./\.\./etc is not an s3://bucket/prefix URL"):
        local_folder("s3://bucket-x/team/../../etc", (FileRecord("passwd", sha, 3),))
    url = "s3://bucket-x/team/dataset/t/0123456789abcdef"
    with pytest.raises(DigestMismatch) as e:
        local_folder(url, (FileRecord("../../../../../../escaped.txt", sha, 3),))
    assert str(e.value) == f"{url}/../../../../../../escaped.txt: recorded file path escapes its artifact folder"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no escaped.txt, no half-made cache copy


def test_refused_credentials_are_one_line_naming_the_url_for_every_s3_operation_and_change_nothing(
        s3, s3run, tmp_path, monkeypatch, capsys):
    from prefect_wandb import artifact_files as af

    data, url = _record(s3run, "data"), s3run["url"]
    wrong = "wrong/" + "k" * 34
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)  # a new filesystem: the environment changed
    calls = {"check_remote": (lambda: af.check_remote(url), f"artifacts: {url} cannot be reached ("),
             "remote_problem": (lambda: af.remote_problem(data.path, data.files), f"reading {data.path} failed ("),
             "local_folder": (lambda: local_folder(data.path, data.files), f"downloading {data.path} failed ("),
             "remote_folders": (lambda: af.remote_folders(url), f"listing {url} failed ("),
             "remove_remote": (lambda: af.remove_remote(data.path), f"removing {data.path} failed ("),
             "publish": (lambda: af.publish(tmp_path, data.path, data.files), f"uploading {data.path} failed (")}
    for name, (call, says) in calls.items():
        with pytest.raises(RemoteArtifactsError) as e:
            call()
        text = str(e.value)
        assert text.startswith(says) and "PermissionError" in text and "\n" not in text, (name, text)
        assert wrong not in text and s3.secret_key not in text, name
    assert "check AWS_ENDPOINT_URL and the AWS credentials" in str(
        pytest.raises(RemoteArtifactsError, af.check_remote, url).value)
    # a reader that reports rather than fails gets the (empty) cache folder, whose missing files it then names
    assert af.readable_folder(data.path, data.files) == cache_root(data.path)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() or p.name.startswith(".download-")]
    # the CLI: one line, the usage exit code, before any work
    assert ops_main(["gc", "--lineage-db", str(s3run["settings"].store), "--artifacts-dir", url]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be reached (PermissionError" in err and wrong not in err, err
    # nothing was removed or changed: with the right key, every object is there with its recorded sha256
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    assert af.remote_problem(data.path, data.files) is None


def test_a_differing_object_in_s3_is_uploaded_again_and_a_folder_changed_after_its_manifest_is_refused(
        s3, s3_bucket, tmp_path, monkeypatch):
    """`publish`: a version S3 holds (same key, same content) is verified, not uploaded again; one whose object
    differs (a partial or tampered upload) is uploaded again; a local folder whose bytes are no longer its
    manifest's (changed after it was taken) reads back different: refused in one line, nothing recorded."""
    from prefect_wandb import artifact_files as af
    from prefect_wandb.refs import manifest, manifest_digest

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    folder = tmp_path / "version"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "b" / "c.txt").write_text("gamma\n")
    files = manifest(folder)
    url = af.version_url(f"{s3_bucket}/team", "dataset", "t", manifest_digest(files))
    assert af.publish(folder, url, files) is True
    assert af.publish(folder, url, files) is False  # held already: verified by sha256, not uploaded again

    _put(s3, f"{url}/b/c.txt", b"gamma, cut shor")  # a partial upload
    problem = af.remote_problem(url, files)
    assert problem is not None and problem.startswith(f"{url}/b/c.txt: sha256 ") and "does not match the recorded" \
        in problem
    with monkeypatch.context() as mp:  # objects over the one-GET size are streamed: the same sha256, verdict
        mp.setattr(af, "_ONE_GET", 0)
        assert af.remote_problem(url, files) == problem
    assert af.publish(folder, url, files) is True  # uploaded again
    assert af.remote_problem(url, files) is None and _get(s3, f"{url}/b/c.txt") == b"gamma\n"

    (folder / "a.txt").write_text("ALPHA\n")  # changed after its manifest was taken
    other = af.version_url(f"{s3_bucket}/team", "dataset", "t", "f" * 64)
    with pytest.raises(RemoteArtifactsError) as e:
        af.publish(folder, other, files)
    text = str(e.value)
    assert text.startswith(f"uploading {other}: read back different ({other}/a.txt: sha256 ") and "\n" not in text
    assert text.endswith("): nothing was recorded")


def test_a_cache_copy_missing_a_file_is_fetched_again_and_an_object_missing_in_s3_is_refused(
        s3, s3run, tmp_path, monkeypatch):
    data = _record(s3run, "data")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = local_folder(data.path, data.files)
    note = folder / "notes" / "source.txt"
    good = note.read_bytes()
    note.unlink()  # an incomplete copy (a cleaner, a crash): its sizes no longer match the record
    assert local_folder(data.path, data.files) == folder and note.read_bytes() == good

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache2"))
    obj = f"{data.path}/rows.csv"
    body = _get(s3, obj)
    bucket, key = _key(obj)
    c = s3.client()
    try:
        c.delete_object(Bucket=bucket, Key=key)
        with pytest.raises(DigestMismatch) as e:
            local_folder(data.path, data.files)
    finally:
        c.put_object(Bucket=bucket, Key=key, Body=body)
        c.close()
    rows = next(f for f in data.files if f.relpath == "rows.csv")
    assert str(e.value) == f"{obj}: missing (recorded sha256 {rows.sha256})"
    assert not cache_root(data.path).exists()  # nothing unverified is left in the cache
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.is_file()]


def test_only_folders_at_a_version_s_place_are_listed_and_removing_one_twice_is_no_error(s3, s3_bucket, monkeypatch):
    from prefect_wandb import artifact_files as af

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    root = f"{s3_bucket}/team"
    version = f"{root}/model/m/{'a' * 16}"
    for obj, body in ((f"{version}/w.bin", b"12345"), (f"{version}/sub/x.json", b"{}"),
                      (f"{root}/.staging/model/{'b' * 16}/w.bin", b"staged"),  # hidden: the cache's own
                      (f"{root}/model/m/not-a-digest/w.bin", b"x"), (f"{root}/README", b"x")):
        _put(s3, obj, body)
    found = af.remote_folders(root)
    assert list(found) == [version] and found[version][0] == 7 and found[version][1] is not None
    assert af.remote_folders("s3://no-such-bucket-anywhere/team") == {}
    af.remove_remote(version)
    af.remove_remote(version)  # already gone: nothing to do
    assert af.remote_folders(root) == {}
