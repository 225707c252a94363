import pytest
from pydantic import ValidationError

from mnist_pipeline.cli.main import main
from mnist_pipeline.config import ALLOWED_ROOTS_ENV, ConfigError, PipelineConfig
from tests.helpers import FAKE_KEY, flow_run, run_payload, task_runs, write_mnist


def test_defaults_are_the_tutorials():
    c = PipelineConfig()
    assert (c.train.epochs, c.train.classes, c.train.kernels, c.train.batch_size, c.train.learning_rate) == (
        5, 10, [16, 32], 128, 0.005)
    assert (c.dataset, c.architecture, c.data.slice) == ("MNIST", "CNN", 5)
    assert (c.train.log_every, c.train.watch, c.train.watch_log_freq) == (25, True, 10)
    flat = c.flat()
    assert flat["epochs"] == 5 and flat["kernels"] == [16, 32] and flat["pipeline"]["data"]["source"] == "download"


@pytest.mark.parametrize("payload, where", [
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"epochs": -3}}, "train.epochs"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate"),
    ({"train": {"kernels": []}}, "train.kernels"),
    ({"train": {"kernels": [16, 0]}}, "train.kernels"),
    ({"train": {"kernels": [16, 32, 64]}}, "train.kernels"),
    ({"data": {"source": "s3"}}, "data.source"),
    ({"data": {"source": "local"}}, "data"),
    ({"data": {"source": "local", "local_dir": "/no/such/dir"}}, "data"),
    ({"wandb": {"mode": "sometimes"}}, "wandb.mode"),
    ({"train": {"epochs": 1, "epoch": 2}}, "train.epoch"),
])
def test_invalid_config_is_rejected_with_the_field_named(payload, where):
    with pytest.raises(ValidationError) as e:
        PipelineConfig.model_validate(payload)
    assert where in {".".join(str(x) for x in err["loc"]) for err in e.value.errors()} or (
        where == "data" and "data" in str(e.value))


def test_resolved_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = PipelineConfig().resolved()
    assert c.artifacts_dir.is_absolute() and c.lineage_db.is_absolute() and c.data.root == tmp_path / "data"


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "0"], "train.epochs"),
    (["--learning-rate", "-1"], "train.learning_rate"),
    (["--source", "local", "--local-dir", "/no/such/dir"], "not a readable directory"),
    (["--kernels", "16"], "train.kernels"),
])
def test_cli_rejects_bad_config_before_any_work(argv, fragment, tmp_path, capsys):
    db = tmp_path / "lineage.db"
    code = main(["run", *argv, "--lineage-db", str(db), "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid configuration" in err and fragment in err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    assert not db.exists() and not (tmp_path / "a").exists()


def test_cli_show_config_merges_file_and_flags(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text('{"train": {"epochs": 2, "batch_size": 64}, "data": {"slice": 3}}')
    assert main(["show-config", "--config", str(f), "--epochs", "3", "--kernels", "8", "4"]) == 0
    out = PipelineConfig.model_validate_json(capsys.readouterr().out)
    assert (out.train.epochs, out.train.batch_size, out.train.kernels, out.data.slice) == (3, 64, [8, 4], 3)


def test_the_ui_form_shows_every_fields_bounds_in_its_description_and_they_are_the_checked_ones():
    """Prefect's form renders a field's description, not its schema minimum/maximum: the limits are written there,
    from the constraints themselves."""
    import pydantic

    from mnist_pipeline.config import PipelineConfig

    defs = PipelineConfig.model_json_schema()["$defs"]
    train = defs["TrainConfig"]["properties"]
    assert train["epochs"]["description"].endswith("(allowed: 1 to 1000)")
    assert train["learning_rate"]["description"].endswith("(allowed: more than 0, at most 10)")
    assert train["kernels"]["description"].endswith("(allowed: exactly 2 items)")
    assert defs["DataConfig"]["properties"]["slice"]["description"].endswith("(allowed: 1 to 10000)")
    checked = 0
    for section in defs.values():
        for name, prop in section["properties"].items():
            if "minimum" in prop or "maximum" in prop or "exclusiveMinimum" in prop or "exclusiveMaximum" in prop:
                assert "(allowed: " in prop.get("description", ""), (name, prop)
                checked += 1
    assert checked > 20
    PipelineConfig.model_validate({"train": {"epochs": 1000}})  # the bound said is the bound checked
    with pytest.raises(pydantic.ValidationError):
        PipelineConfig.model_validate({"train": {"epochs": 1001}})


@pytest.mark.parametrize("name, text, fragment", [
    ("c.yaml", "train:\n  epochs: 2\n batch_size: [64\n", r"c\.yaml: not valid YAML at line \d+, column \d+: "),
    ("c.yml", "train: {epochs: 2\n", r"c\.yml: not valid YAML at line \d+, column \d+: "),
    ("c.json", '{"train": {"epochs": 2,}}', r"c\.json: not valid JSON at line 1, column \d+: "),
    ("c.yaml", "- 1\n- 2\n", r"c\.yaml: holds a list, not a mapping"),
])
def test_a_malformed_config_file_is_one_line_naming_the_file_and_the_position(tmp_path, capsys, name, text,
                                                                              fragment):
    import re

    f = tmp_path / name
    f.write_text(text)
    db = tmp_path / "lineage.db"
    code = main(["run", "--config", str(f), "--lineage-db", str(db), "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one clear line, no traceback
    assert re.search(r"^mnist-pipeline: cannot read --config: .*" + fragment, err), err
    assert str(f) in err
    assert not db.exists() and not (tmp_path / "a").exists()


@pytest.mark.parametrize("flag, value, why", [
    ("--wandb-project", "../../evil", "a W&B project name cannot contain /"),
    ("--wandb-entity", "../evil", "a W&B entity name cannot contain /"),
    ("--wandb-project", "..", "a W&B project name cannot be only dots"),
    ("--wandb-entity", "team#1", "a W&B entity name cannot contain #"),
    ("--wandb-project", "what?", "a W&B project name cannot contain ?"),
    ("--wandb-project", "a:b%c", "a W&B project name cannot contain % :"),
    ("--wandb-project", "back\\slash", "a W&B project name cannot contain \\"),
    ("--wandb-project", "two\nlines", "a W&B project name cannot contain control characters"),
    ("--wandb-project", "p" * 129, "wandb.project: String should have at most 128 characters"),
    ("--wandb-entity", "e" * 129, "wandb.entity: String should have at most 128 characters"),
])
def test_w_and_b_names_are_checked_at_the_door_as_w_and_b_would(tmp_path, capsys, flag, value, why):
    db = tmp_path / "lineage.db"
    code = main(["run", flag, value, "--lineage-db", str(db), "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mnist-pipeline: invalid configuration: wandb.") and why in err, err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    assert not db.exists() and not (tmp_path / "a").exists()


def test_w_and_b_names_w_and_b_accepts_are_accepted():
    for name in ("mnist-lineage", "My Project_2.0", "p" * 128, "wandb-registry-model", "équipe"):
        assert PipelineConfig.model_validate({"wandb": {"project": name}}).wandb.project == name
    for name in ("my-team", "ml_team2", "e" * 128):
        assert PipelineConfig.model_validate({"wandb": {"entity": name}}).wandb.entity == name


def test_wandb_dir_from_the_environment_is_confined_to_the_allowed_roots_like_the_flag(tmp_path, monkeypatch,
                                                                                         capsys):
    from mnist_pipeline.config import ALLOWED_ROOTS_ENV, ConfigError

    allowed = tmp_path / "allowed"
    inside = {"data": {"root": str(allowed / "data"), "source": "synthetic"}, "artifacts_dir": str(allowed / "art"),
              "lineage_db": str(allowed / "lineage.db")}
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    monkeypatch.setenv("WANDB_DIR", str(allowed / ".." / "evil"))
    with pytest.raises(ConfigError, match=r"^\$WANDB_DIR \(wandb.dir unset\): .* outside the allowed roots"):
        PipelineConfig.model_validate(inside).resolved()
    # the flag wins over the environment, as in wandb: a wandb.dir inside the roots is fine
    PipelineConfig.model_validate({**inside, "wandb": {"dir": str(allowed / "wandb")}}).resolved()
    monkeypatch.setenv("WANDB_DIR", str(allowed / "wandb"))
    PipelineConfig.model_validate(inside).resolved()

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "evil"))
    code = main(["run", "--source", "synthetic", "--root", str(allowed / "data"), "--lineage-db",
                 str(allowed / "lineage.db"), "--artifacts-dir", str(allowed / "art")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "invalid configuration: $WANDB_DIR (wandb.dir unset):" in err and str(tmp_path / "evil") in err
    assert not allowed.exists() and not (tmp_path / "evil").exists()


# ------------------------------------------------------------------------------------ bad input: Prefect API payloads


@pytest.mark.parametrize("section, key, value, field", [
    ("train", "epochs", 0, "train.epochs"),
    ("train", "epochs", -2, "train.epochs"),
    ("train", "batch_size", 0, "train.batch_size"),
    ("train", "learning_rate", 0.0, "train.learning_rate"),
    ("train", "learning_rate", -0.01, "train.learning_rate"),
    ("train", "kernels", [16], "train.kernels"),
    ("train", "kernels", [16, -4], "train.kernels"),
    ("train", "classes", 11, "train.classes"),
    ("data", "source", "s3", "data.source"),
    ("data", "slice", 0, "data.slice"),
    ("wandb", "mode", "sometimes", "wandb.mode"),
    ("train", "epoch", 2, "train.epoch"),  # a typo, not silently ignored
])
def test_a_bad_prefect_api_payload_fails_the_flow_run_before_any_task(prefect_server, tmp_path, section, key,
                                                                      value, field):
    payload = {section: {key: value}, "artifacts_dir": str(tmp_path / "art"),
               "lineage_db": str(tmp_path / "lineage.db")}
    fr, state = run_payload(payload)
    assert state.is_failed()
    assert "Validation of flow parameters failed" in state.message
    with pytest.raises(Exception) as e:
        state.result()
    assert field.split(".")[-1] in str(e.value) and section in str(e.value)
    assert flow_run(fr.id).state.is_failed()  # the server holds the failure, too
    assert task_runs(fr.id) == []  # no task ran
    assert not (tmp_path / "lineage.db").exists() and not (tmp_path / "art").exists()


# ------------------------------------------------------------------------------------------ bad input: paths and URLs


def test_paths_from_parameters_cannot_escape_the_allowed_roots(prefect_server, tiny_mnist, tmp_path, monkeypatch,
                                                                capsys):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    write_mnist(outside / "idx")
    inside = {"data": {"root": str(allowed / "data"), "source": "synthetic"},
              "artifacts_dir": str(allowed / "art"), "lineage_db": str(allowed / "lineage.db"),
              "wandb": {"dir": str(allowed / "wandb"), "mode": "offline"}}
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(allowed))
    PipelineConfig.model_validate(inside).resolved()  # all inside: accepted

    escapes = [
        ({"artifacts_dir": str(allowed / ".." / "outside" / "art")}, "artifacts_dir"),
        ({"lineage_db": "/tmp/lineage.db"}, "lineage_db"),
        ({"data": {"root": str(allowed / "link" / "data"), "source": "synthetic"}}, "data.root"),  # via a symlink
        ({"data": {"root": str(allowed / "data"), "source": "local", "local_dir": str(allowed / "link" / "idx")}},
         "data.local_dir"),
        ({"wandb": {"dir": str(allowed / ".." / "w"), "mode": "offline"}}, "wandb.dir"),
        ({"sign": {"private_key": str(outside / "signing.key")}}, "sign.private_key"),  # any PEM the worker reads
    ]
    for change, field in escapes:
        cfg = PipelineConfig.model_validate({**inside, **change})
        with pytest.raises(ConfigError, match=f"^{field}: .* outside the allowed roots"):
            cfg.resolved()

    # the CLI: exit 2, one line naming the field, nothing created
    code = main(["run", "--source", "synthetic", "--root", str(allowed / "data"), "--lineage-db",
                 str(allowed / "lineage.db"), "--artifacts-dir", str(allowed / ".." / "outside" / "art")])
    err = capsys.readouterr().err
    assert code == 2 and "invalid configuration: artifacts_dir:" in err and len(err.strip().splitlines()) == 1
    # the signing key, a config file and keygen's folder are held to the roots too
    from prefect_wandb.provenance import keys

    key, _pub = keys.generate(outside / "keys")
    (outside / "cfg.yaml").write_text(f"lineage_db: {allowed / 'lineage.db'}\n")
    inside_flags = ["--source", "synthetic", "--root", str(allowed / "data"), "--lineage-db", str(allowed / "lineage.db"),
                    "--artifacts-dir", str(allowed / "art")]
    for argv, says in ((["run", *inside_flags, "--sign-key", str(key)], "mnist-pipeline: invalid configuration: sign.private_key: "),
                       (["run", *inside_flags, "--config", str(outside / "cfg.yaml")],
                        "mnist-pipeline: invalid configuration: --config: "),
                       (["keygen", "--out", str(outside / "new-keys")], "mnist-pipeline keygen: --out: ")):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(says) and "outside the allowed roots" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (outside / "new-keys").exists()
    # a Prefect API payload: the flow run fails before any task, nothing is written
    fr, state = run_payload({**inside, "lineage_db": str(outside / "lineage.db")})
    assert state.is_failed()
    with pytest.raises(ConfigError, match="lineage_db: .* outside the allowed roots"):
        state.result()
    assert task_runs(fr.id) == []
    fr, state = run_payload({**inside, "sign": {"private_key": str(key)}})  # sign with the worker's other key
    assert state.is_failed() and task_runs(fr.id) == []
    with pytest.raises(ConfigError, match="sign.private_key: .* outside the allowed roots"):
        state.result()
    assert not (outside / "lineage.db").exists() and not (outside / "art").exists()
    assert not (allowed / "lineage.db").exists() and not (allowed / "art").exists()


def test_credentials_in_a_mirror_url_are_refused_before_they_are_recorded(capsys, tmp_path):
    code = main(["run", "--mirrors", f"https://user:{FAKE_KEY}@mirror.example/mnist/", "--lineage-db",
                 str(tmp_path / "l.db"), "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "data.mirrors" in err and "credentials" in err and FAKE_KEY not in err
    assert not (tmp_path / "l.db").exists()



def test_the_form_s_sections_have_headings_and_a_text_field_counts_characters():
    from mnist_pipeline.config import PipelineConfig

    defs = PipelineConfig.model_json_schema()["$defs"]
    assert {d["title"] for d in defs.values()} == {"Data", "Training", "Evaluation", "ONNX export",
                                                    "Weights & Biases", "Promotion", "Signing"}
    wandb = defs["WandbConfig"]["properties"]
    assert wandb["entity"]["description"].endswith("(allowed: at most 128 characters)")  # `str | None` is text
    assert wandb["project"]["description"].endswith("(allowed: 1 to 128 characters)")
    assert defs["TrainConfig"]["properties"]["kernels"]["description"].endswith("(allowed: exactly 2 items)")
