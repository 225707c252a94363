import pytest
from pydantic import ValidationError

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.flows.cli import main


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
