"""The promotion gate and the skip rule as an operator meets them: a rollback that sticks until `unreject`, the
gate's own verdict that stands on the same test set, a skip rule that knows every finished model it made, the
promotion history in time order, and `promotion.require_signature`. Pure tables for the rules; the real lineage
store for the records; real Prefect, wandb offline and the real CLI for the operator scenarios."""

from __future__ import annotations

import argparse
import json
import sqlite3

import pytest

from mnist_pipeline.config import ConfigError, PipelineConfig
from prefect_wandb import GatePolicy, promotion, rejections, skip
from prefect_wandb.cli import aliases as ops_cli
from prefect_wandb.exit_codes import Exit
from prefect_wandb.promotion import Signature, decide
from prefect_wandb.skip import MadeModel, skip_rule
from prefect_wandb.store import LineageStore
from tests.helpers import tiny_config
from tests.test_operations import Lineage

FP = {"learning_rate": 0.01, "epochs": 1}

# ------------------------------------------------------------------------------------------- the gate, as a table

# (rejection, earlier verdict, signature, production, decision, reason starts with / contains)
GATE_ROWS = [
    ("rejected by rollback at T1 (rollback from convnet:v5 to convnet:v0)", None, None, 0.5, "candidate",
     "rejected by rollback at T1 (rollback from convnet:v5 to convnet:v0); `mnist-pipeline unreject convnet:v5` "
     "lets the gate consider it again"),
    ("rejected by rollback at T1 (r)", None, None, None, "candidate", "rejected by rollback at T1 (r)"),
    (None, "the gate kept it candidate on mnist:v0 at T0: accuracy 0.9000 < production", None, 0.5, "candidate",
     "the gate kept it candidate on mnist:v0 at T0: accuracy 0.9000 < production; the gate's record stands"),
    (None, "the gate kept it candidate", None, "self", "promoted", "already the production model"),
    (None, None, Signature(False, "this run's sign stage made none"), None, "candidate",
     "promotion.require_signature and no verified attestation (this run's sign stage made none)"),
    (None, None, Signature(True, "ab" * 32), None, "promoted",
     "first validated model; signature verified (key abababababababab)"),
    (None, None, Signature(True, "cd" * 32), 0.99, "candidate", "accuracy 0.7000 < production 0.9900 + margin 0.0000"
     "; signature verified (key cdcdcdcdcdcdcdcd)"),
]


@pytest.mark.parametrize("rejection, earlier, signature, production, decision, reason", GATE_ROWS)
def test_gate_rows_for_rejections_earlier_verdicts_and_signatures(rejection, earlier, signature, production,
                                                                  decision, reason):
    production_id = None if production is None else 7 if production == "self" else 3
    got = decide(candidate_id=7, value=0.7, validation_passed=True, production_id=production_id,
                 production_value=production if isinstance(production, float) else None, policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0),
                 unreject_hint="mnist-pipeline unreject",
                 candidate_label="convnet:v5", rejection=rejection, earlier=earlier, signature=signature)
    assert (got.decision, got.reason[: len(reason)]) == (decision, reason)


def test_without_the_new_inputs_the_gate_decides_as_before():
    got = decide(candidate_id=7, value=0.7, validation_passed=True, production_id=3, production_value=0.6,
                 policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0))
    assert (got.decision, got.reason) == ("promoted", "accuracy 0.7000 >= production 0.6000 + margin 0.0000")


# ------------------------------------------------------------------------------------------- the skip rule, as a table

def _m(label, dataset="d1", fp=None, production=False, decided=None):
    return MadeModel(label, f"digest-{label}", dataset, f"mnist:{dataset}", dict(fp or FP), production, decided)


# (models, dataset digest, changed, model to use, decided, reason contains)
SKIP_ROWS = [
    ([], "d1", True, None, None, "no production convnet model yet"),
    ([_m("convnet:v0", production=True)], "d1", False, "convnet:v0", None, "unchanged since production convnet:v0"),
    ([_m("convnet:v0", dataset="d0", production=True)], "d1", True, None, None,
     "is not mnist:d0, which trained production convnet:v0"),
    ([_m("convnet:v0", fp={"learning_rate": 1.0, "epochs": 1}, production=True)], "d1", True, None, None,
     "training config changed since production convnet:v0: learning_rate 1.0 -> 0.01"),
    # production was made from other inputs, but these inputs already made v0: it is not trained again
    ([_m("convnet:v0", decided="kept candidate by the gate at T: accuracy low"),
      _m("convnet:v5", dataset="d9", production=True)], "d1", False, "convnet:v0",
     "kept candidate by the gate at T: accuracy low", "already made convnet:v0, and it was decided: kept candidate"),
    ([_m("convnet:v0"), _m("convnet:v5", dataset="d9", production=True)], "d1", False, "convnet:v0", None,
     "already made convnet:v0, never decided by the gate: it goes to the gate without retraining"),
    ([_m("convnet:v0")], "d1", False, "convnet:v0", None, "never decided by the gate"),
    ([_m("convnet:v5", decided="rejected by rollback at T (why)"), _m("convnet:v0", dataset="d0", production=True)],
     "d1", False, "convnet:v5", "rejected by rollback at T (why)", "it was decided: rejected by rollback at T"),
]


@pytest.mark.parametrize("models, digest, changed, model, decided, reason", SKIP_ROWS)
def test_skip_rule_knows_every_finished_model(models, digest, changed, model, decided, reason):
    got = skip_rule(models, "convnet", digest, f"mnist:{digest}", dict(FP))
    assert (got.changed, got.model, got.decided) == (changed, model, decided)
    assert reason in got.reason, got.reason
    assert got.production == next((m.label for m in models if m.production), None)


# ------------------------------------------------------------------------------------------- on the real store


class Gated(Lineage):
    def pipeline_acc(self, dataset, tag: str, acc: float):
        """train -> evaluate (this accuracy) -> export -> validate, like one flow run on `dataset`."""
        flow = f"flow-{tag}"
        meta = {"fingerprint": {"tag": tag},
                "inputs": [{"type": "dataset", "name": dataset.name, "version": dataset.version,
                            "digest": dataset.digest}]}
        _, [model] = self.run("train", [dataset], [("convnet", "model", f"weights {tag}", meta)], flow=flow)
        _, [metrics] = self.run("evaluate", [model, dataset], [("convnet-metrics", "metrics", f"m {tag}",
                                                                 {"test_accuracy": acc})], flow=flow)
        _, [onnx] = self.run("export-onnx", [model], [("convnet-onnx", "onnx", f"onnx {tag}", {})], flow=flow)
        self.run("validate-onnx", [onnx, model, dataset],
                 [("convnet-onnx-validation", "validation", f"v {tag}", {"passed": True})], flow=flow)
        return model, acc

    def gate(self, model, acc, dataset, force=False):
        forced = {"force": True} if force else {}
        policy = GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0)
        return promotion.promote(self.store, model.artifact_id, value=acc, validation_passed=True, policy=policy,
                                 flow_run_id=None, test_set=(dataset.label, dataset.digest),
                                 unreject_hint="mnist-pipeline unreject", **forced)


@pytest.fixture
def gated(tmp_path, store_at):
    return Gated(tmp_path, store_at)


def test_the_alias_names_and_the_metric_are_the_policy_s_and_on_the_record(gated):
    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    # lower is better here, on the value each evaluation recorded
    policy = GatePolicy(metric="test_accuracy", higher_is_better=False, candidate_alias="staging",
                        production_alias="live")
    first, _ = gated.pipeline_acc(d, "a", 0.5)
    better, _ = gated.pipeline_acc(d, "b", 0.4)
    worse, _ = gated.pipeline_acc(d, "c", 0.6)
    for model, rmse in ((first, 0.5), (better, 0.4), (worse, 0.6)):
        got = promotion.promote(gated.store, model.artifact_id, value=rmse, validation_passed=True, policy=policy,
                                flow_run_id=None)
        assert got.metric == "test_accuracy" and got.candidate_value == rmse
    assert [p.aliases for p in gated.store.promotions()] == [["staging", "live"], ["staging", "live"], ["staging"]]
    assert gated.store.alias("convnet", "live").artifact_id == better.artifact_id
    assert gated.store.alias("convnet", "staging").artifact_id == worse.artifact_id
    assert gated.store.alias("convnet", "production") is None  # the store has no alias names of its own


def _ns(db, **kw):
    base = {"to": None, "name": "convnet", "reason": "", "requested_by": "ops", "lineage_db": str(db),
            "wandb_mode": "offline", "dry_run": False, "json": True}
    return argparse.Namespace(**{**base, **kw})


def test_a_rollback_rejects_the_model_it_leaves_until_unreject(gated, capsys):
    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    v1, a1 = gated.pipeline_acc(d, "b", 0.95)
    gated.gate(v0, a0, d)
    assert gated.gate(v1, a1, d).decision == "promoted"
    assert ops_cli.rollback_main(_ns(gated.location, reason="bad in canary")) == Exit.OK
    out = json.loads(capsys.readouterr().out)
    assert (out["to"], out["rejected"], out["candidate"]) == ("convnet:v0", "convnet:v1", "convnet:v0")
    # candidate was on v1 (gated last): a rejected model is nobody's candidate, it follows production back to v0
    assert gated.store.alias("convnet", "candidate").artifact_id == v0.artifact_id
    assert gated.store.promotions()[-1].aliases == ["production", "candidate"]  # for W&B (sync) to follow
    # the same sweep or run makes v1 again: the gate does not promote it, and says why and what to do
    again = gated.gate(v1, a1, d)
    assert again.decision == "candidate", again.reason
    assert again.reason.startswith("rejected by rollback at ") and "bad in canary" in again.reason
    assert again.reason.endswith("`mnist-pipeline unreject convnet:v1` lets the gate consider it again")
    assert gated.store.alias("convnet", "production").artifact_id == v0.artifact_id
    assert gated.gate(v1, a1, d, force=True).decision == "candidate"  # force does not lift an operator's rejection
    # the skip rule knows it too: these inputs made v1, which was decided
    check = skip.compare_with_production(gated.store, "convnet", d.digest, d.label, {"tag": "b"})
    assert (check.changed, check.model) == (False, "convnet:v1") and "rejected by rollback" in check.decided

    u = argparse.Namespace(target="convnet:v1", reason="fixed upstream", requested_by="ops",
                           lineage_db=gated.location, json=False)
    assert ops_cli.unreject_main(u) == Exit.OK
    assert capsys.readouterr().out.startswith("UNREJECTED convnet:v1: the promotion gate considers it again")
    assert rejections.current(gated.store, v1.artifact_id) is None
    assert [r.action for r in rejections.history(gated.store, v1.artifact_id)] == ["reject", "unreject"]
    check = skip.compare_with_production(gated.store, "convnet", d.digest, d.label, {"tag": "b"})
    assert (check.changed, check.model, check.decided, check.action) == (False, "convnet:v1", None, "reuse")
    # to the gate again, and the reason says what the record says: decided, rejected, unrejected, not "never decided"
    assert "never decided" not in check.reason, check.reason
    assert "already made convnet:v1, decided before and unrejected since (promoted by the gate at " in check.reason
    assert "; rejected by rollback at " in check.reason and "bad in canary" in check.reason
    assert "; unrejected by ops at " in check.reason and "(fixed upstream)" in check.reason
    assert check.reason.endswith("): it goes to the gate again without retraining")
    assert gated.gate(v1, a1, d).decision == "promoted"
    assert ops_cli.unreject_main(u) == Exit.NOT_FOUND  # not rejected (any more)
    assert "convnet:v1 is not rejected" in capsys.readouterr().err
    assert ops_cli.unreject_main(argparse.Namespace(**{**vars(u), "target": "convnet:v9"})) == Exit.NOT_FOUND
    assert ops_cli.unreject_main(argparse.Namespace(**{**vars(u), "target": "mnist:v0"})) == Exit.NOT_FOUND


def test_the_gates_own_candidate_verdict_stands_on_the_same_test_set_unless_forced(gated):
    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    v1, a1 = gated.pipeline_acc(d, "b", 0.91)
    v2, a2 = gated.pipeline_acc(d, "c", 0.92)
    gated.gate(v0, a0, d)
    gated.gate(v2, a2, d)
    first = gated.gate(v1, a1, d)
    assert first.decision == "candidate"  # 0.91 < v2's 0.92
    gated.store.record_rollback(v0.artifact_id, reason="rollback from convnet:v2 to convnet:v0", requested_by="ops")
    # against v0 (0.90), re-deciding would promote v1; the gate's record is the answer on the same test set
    again = gated.gate(v1, a1, d)
    assert again.decision == "candidate", again.reason
    assert again.reason.startswith(f"the gate kept it candidate on {d.label} at {first.decided_at}: ")
    assert gated.gate(v1, a1, d, force=True).decision == "promoted"


def test_a_forced_rerun_of_the_production_model_keeps_production_since(gated):
    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    gated.gate(v0, a0, d)
    since = {a.alias: a.set_at for a in gated.store.aliases_of(v0.artifact_id)}
    again = gated.gate(v0, a0, d)  # as a forced rerun of the same run would
    assert again.reason == "already the production model"
    assert {a.alias: a.set_at for a in gated.store.aliases_of(v0.artifact_id)} == since


def test_the_audit_lists_promotions_by_time_and_labels_a_rollback(gated):
    from prefect_wandb.audit import audit
    from prefect_wandb.audit.render import render_tree

    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    v1, a1 = gated.pipeline_acc(d, "b", 0.95)
    gated.gate(v0, a0, d)
    gated.gate(v1, a1, d)
    gated.store.record_rollback(v0.artifact_id, reason="rollback from convnet:v1 to convnet:v0", requested_by="ops")
    report = audit(gated.store, "convnet:v0")
    assert [p.promotion_id for p in report.promotions] == [1, 2, 3]
    text = render_tree(report)
    lines = [ln for ln in text[text.index("\nPromotions\n"):].splitlines() if ln.startswith("  20")]
    assert [ln.split()[1:3] for ln in lines] == [["convnet:v0", "PROMOTED"], ["convnet:v1", "PROMOTED"],
                                                ["convnet:v0", "ROLLBACK"]], lines


def test_sync_plans_an_alias_move_once_and_marks_every_decision_it_applies(gated):
    from prefect_wandb.recording import RecordingWandb
    from prefect_wandb.sync import plan_sync, run_sync

    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    gated.gate(v0, a0, d)
    gated.gate(v0, a0, d)  # "already the production model" (a forced rerun): the same move again
    plan = plan_sync(gated.store)
    assert [(p.artifact, p.aliases) for p in plan.promotions] == [("convnet:v0", ["candidate", "production"])]
    assert plan.promotions[0].promotion_ids == [1, 2]
    backend = RecordingWandb(artifacts={f"convnet:sha256-{v0.digest[:16]}": {
        "version": "v0", "aliases": ["latest"], "logged_by": "r", "used_by": []}})
    for r in gated.store.runs():  # the runs are in W&B already: only the promotions are left
        gated.store.mark_synced(r.run_id, "upload", f"run-{r.run_id}")
    run_sync(gated.store, plan_sync(gated.store), backend)
    assert all(p.wandb_applied_at for p in gated.store.promotions())
    assert sum(c[0] == "add_aliases" for c in backend.calls) == 1


def test_an_older_store_gains_the_rejections_and_opens_read_only_without_them(tmp_path):
    db = tmp_path / "lineage.db"
    LineageStore(db)
    with sqlite3.connect(db) as con:  # as an older release left it
        con.execute("DROP TABLE rejections")
    ro = LineageStore(db, readonly=True)
    assert rejections.current(ro, 1) is None and rejections.history(ro) == []
    LineageStore(db)  # a writable open brings it up to date
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM rejections").fetchone() == (0,)
        assert "test_set" in {r[1] for r in con.execute("PRAGMA table_info(promotions)")}


def test_unreject_on_a_damaged_store_is_exit_6_and_a_usage_error_exit_2(tmp_path, capsys):
    from mnist_pipeline.cli.main import main

    db = tmp_path / "lineage.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    assert main(["unreject", "convnet:v0", "--lineage-db", str(db)]) == Exit.STORE
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["unreject", "--lineage-db", str(db)]) == Exit.USAGE  # argparse's usage error, returned


# ------------------------------------------------------------------------------------------- require_signature


def test_require_signature_without_a_key_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from mnist_pipeline.cli.main import main

    monkeypatch.delenv("MNIST_PIPELINE_SIGN_KEY", raising=False)
    with pytest.raises(ConfigError, match="promotion.require_signature is set but there is no signing key"):
        PipelineConfig.model_validate({"promotion": {"require_signature": True},
                                       "lineage_db": str(tmp_path / "l.db")}).resolved()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"promotion": {"require_signature": True}, "lineage_db": str(tmp_path / "l.db"),
                               "artifacts_dir": str(tmp_path / "art")}))
    assert main(["run", "--config", str(cfg)]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "require_signature" in err, err
    assert not (tmp_path / "l.db").exists() and not (tmp_path / "art").exists()


# ------------------------------------------------------------------------------------------- the operator's scenarios


def _cfg(tmp_path, src, force=False, **train):
    return tiny_config(tmp_path, src, force=force, train=train)


def _trained(store):
    return sum(r.job_type == "train" for r in store.runs())


@pytest.mark.slow
def test_a_rollback_sticks_across_reruns_and_an_unchanged_run_after_another_winner_does_not_retrain(
        prefect_server, wandb_offline, tiny_mnist, tmp_path, capsys):
    from mnist_pipeline.cli.main import main
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline as flow

    store = LineageStore(tmp_path / "lineage.db")
    weak = dict(learning_rate=1e-6)
    good = dict(learning_rate=0.01, epochs=3)
    assert flow(config=_cfg(tmp_path, tiny_mnist, **weak)).to_dict()["promotion"]["decision"] == "promoted"  # convnet:v0
    first_good = flow(config=_cfg(tmp_path, tiny_mnist, **good)).to_dict()
    assert first_good["promotion"]["decision"] == "promoted"  # convnet:v1
    v1_digest = first_good["artifacts"]["model"]["digest"]

    # the weak config again, now that v1 is production: its model v0 exists and was decided, so no training
    again = flow(config=_cfg(tmp_path, tiny_mnist, **weak), return_state=True).result().to_dict()
    assert again["status"] == "skipped", again["reason"]
    assert "already made convnet:v0, and it was decided: promoted by the gate at" in again["reason"]
    assert "since replaced as production" in again["reason"] and _trained(store) == 2

    assert main(["rollback", "--lineage-db", str(store.path), "--reason", "bad in canary",
                 "--wandb-mode", "offline"]) == Exit.OK
    assert "convnet:v1 is rejected" in capsys.readouterr().out
    # the same run again: v1 is what these inputs made, and an operator rejected it
    rerun = flow(config=_cfg(tmp_path, tiny_mnist, **good), return_state=True).result().to_dict()
    assert rerun["status"] == "skipped" and "it was decided: rejected by rollback at" in rerun["reason"]
    assert "bad in canary" in rerun["reason"] and _trained(store) == 2
    # the remedy it names is unreject: --force would retrain the same bits and leave them rejected
    assert "`mnist-pipeline unreject convnet:v1`" in rerun["reason"] and "--force" not in rerun["reason"]
    # forced: trained again (the same bits), and the gate still keeps it candidate, saying how to undo that
    forced = flow(config=_cfg(tmp_path, tiny_mnist, force=True, **good)).to_dict()
    assert forced["artifacts"]["model"]["digest"] == v1_digest
    assert forced["promotion"]["decision"] == "candidate"
    assert forced["promotion"]["reason"].startswith("rejected by rollback at ")
    assert "`mnist-pipeline unreject convnet:v1` lets the gate consider it again" in forced["promotion"]["reason"]
    assert store.alias("convnet", "production").version == 0

    assert main(["unreject", "convnet:v1", "--lineage-db", str(store.path), "--reason", "canary fixed"]) == Exit.OK
    capsys.readouterr()
    # considered again: not retrained, straight to the gate, which compares it with production v0
    back = flow(config=_cfg(tmp_path, tiny_mnist, **good)).to_dict()
    assert back["reason"].startswith("not retrained: ") and "already made convnet:v1" in back["reason"]
    assert back["promotion"]["decision"] == "promoted" and _trained(store) == 3
    assert store.alias("convnet", "production").digest == v1_digest


@pytest.mark.slow
def test_a_model_whose_run_died_before_the_gate_is_reused_not_retrained(prefect_server, wandb_offline, tiny_mnist,
                                                                        tmp_path, monkeypatch):
    from mnist_pipeline.flows import pipeline

    store = LineageStore(tmp_path / "lineage.db")

    def dies(*a, **kw):
        raise RuntimeError("worker lost before the gate")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "promote", dies)
        state = pipeline.mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist), return_state=True)
        assert state.is_failed()
    assert _trained(store) == 1 and store.promotions() == []
    out = pipeline.mnist_lineage_pipeline(config=_cfg(tmp_path, tiny_mnist)).to_dict()
    assert "already made convnet:v0, never decided by the gate" in out["reason"]
    assert _trained(store) == 1 and out["artifacts"]["model"]["ref"] == "convnet:v0"
    assert out["promotion"]["decision"] == "promoted"


@pytest.mark.slow
def test_require_signature_promotes_only_a_verified_attestation_and_says_so(prefect_server, wandb_offline,
                                                                             tiny_mnist, tmp_path, monkeypatch):
    from mnist_pipeline.config import SIGN_KEY_ENV
    from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline as flow
    from prefect_wandb.provenance import keys
    from tasks.promote import _signature

    monkeypatch.delenv(SIGN_KEY_ENV, raising=False)
    key, pub = keys.generate(tmp_path / "keys")
    cfg = PipelineConfig.model_validate({**_cfg(tmp_path, tiny_mnist).model_dump(mode="json"),
                                         "promotion": {"require_signature": True}, "sign": {"private_key": str(key)}})
    out = flow(config=cfg).to_dict()
    fp = keys.fingerprint(keys.load_public(pub))
    assert out["promotion"]["decision"] == "promoted"
    assert out["promotion"]["reason"] == f"first validated model; signature verified (key {fp[:16]})"
    store = LineageStore(cfg.lineage_db)
    promote_run = next(r for r in store.runs() if r.job_type == "promote")
    assert "attestation" in {a.type for a in store.edges(promote_run.run_id).used}  # the decision rests on it

    # the same check, with no attestation, and with another key than the one that signed
    resolved = cfg.resolved()
    val, att_ref = store.artifacts("validation")[-1].ref(), store.artifacts("attestation")[-1].ref()
    assert _signature(resolved, store, val, None) == Signature(False, "this run's sign stage made none")
    other, _ = keys.generate(tmp_path / "other")
    no = _signature(resolved.model_copy(update={"sign": resolved.sign.model_copy(update={"private_key": other})}),
                    store, val, att_ref)
    assert not no.verified and "does not verify convnet-onnx:v0" in no.detail
    got = decide(candidate_id=1, value=0.9, validation_passed=True, production_id=None, production_value=None,
                 policy=GatePolicy(metric="test_accuracy", label="accuracy", margin=0.0), signature=no)
    assert got.decision == "candidate"
    assert got.reason.startswith("promotion.require_signature and no verified attestation (convnet-onnx-attestation")


# ------------------------------------------------------------------------- what a promotion was compared against


@pytest.mark.slow  # stages with W&B offline, twice
def test_the_metrics_production_was_compared_with_are_an_input_of_the_promote_run(gated, wandb_offline, tmp_path):
    """Production's own evaluation on the candidate's test set (no re-evaluation needed): the promote stage did not
    record it as an input, so audit, impact and W&B could not say what the decision compared against (issue 30,
    item 5). Now the decision names it, the promote run used it (in the same transaction), and audit and impact
    show it."""
    from prefect_wandb import LineageSettings, WandbSettings, impact, open_stage
    from prefect_wandb.audit import audit
    from prefect_wandb.audit.render import render_tree
    from prefect_wandb.queries import evaluations

    _, [d] = gated.run("prepare-data", produce=[("mnist", "dataset", "d", {})])
    v0, a0 = gated.pipeline_acc(d, "a", 0.90)
    v1, a1 = gated.pipeline_acc(d, "b", 0.95)
    gated.gate(v0, a0, d)
    [m0], [m1] = evaluations(gated.store, v0.artifact_id), evaluations(gated.store, v1.artifact_id)
    settings = LineageSettings(store=gated.location, artifacts=gated.root,
                               wandb=WandbSettings(project="gate", mode="offline", dir=str(wandb_offline)))
    policy = GatePolicy(metric="test_accuracy", label="accuracy")
    with open_stage(settings, "promote") as stage:
        value = stage.record(m1.ref()).metadata["test_accuracy"]
        decision = stage.promote(v1.ref(), value=value, validation_passed=True, policy=policy, test_set=d.ref())
    assert decision.decision == "promoted" and decision.production_value == pytest.approx(0.90), decision.reason
    assert decision.production_metrics_id == m0.artifact_id
    assert m0.artifact_id in {u.artifact_id for u in stage.used}
    used = {u.label for u in gated.store.edges(stage.run_id).used}
    assert used == {v1.label, m1.label, m0.label}
    # the audit of the promoted model names what its promotion compared against
    report = audit(gated.store, v1.label)
    [mine] = [p for p in report.promotions if p.artifact == v1.label]
    assert mine.compared_with == m0.label
    assert f"; compared with {m0.label}; validation passed" in render_tree(report)
    # and its promote run is in the forward walk, production's metrics among its inputs (the one from outside)
    [promote_run] = [d for d in report.downstream if d.job_type == "promote"]
    assert promote_run.run == stage.run_id and m0.label in promote_run.used
    # the impact of production's metrics: the promote run that used it, and the decision it entered
    rep = impact.impact(gated.store, [m0])
    assert [r.job_type for r in rep.runs.values()] == ["promote"]
    assert [(p.artifact, p.compared_with) for p in rep.promotions] == [(v1.label, m0.label)]
    assert f"decision about {v1.label}, compared with this promoted at " in impact.render_tree(rep)
    # without a test set, production's newest evaluation is the source, and the deciding run's input too
    v2, a2 = gated.pipeline_acc(d, "c", 0.97)
    run_id, _ = gated.run("promote", [v2], status="running")
    got = promotion.promote(gated.store, v2.artifact_id, value=a2, validation_passed=True, policy=policy,
                            flow_run_id=None, run_id=run_id)
    assert got.production_metrics_id == m1.artifact_id and got.production_value == pytest.approx(0.95)
    assert m1.artifact_id in {u.artifact_id for u in gated.store.edges(run_id).used}
    # a decision that compared nothing (the first model) names no source
    assert gated.store.promotions()[0].production_metrics_id is None
