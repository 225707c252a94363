"""Sweep files: parsing, refusal with one line, deterministic expansion into validated trial configs."""

import pytest
import yaml

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.sweep import Metric, SweepError, TrialResult, expand, load_sweep, parse_sweep, rank

BASE = PipelineConfig()


def sweep(text: str):
    return parse_sweep(yaml.safe_load(text))


def test_grid_is_the_product_in_file_order_with_every_config_validated():
    s = sweep("""
method: grid
metric: {name: test_loss, goal: minimize}
parameters:
  train.learning_rate: {values: [0.001, 0.01]}
  train.kernels: {values: [[8, 16], [16, 32]]}
  train.epochs: {value: 2}
name: lr-x-width
""")
    assert s.metric == Metric("test_loss", "minimize") and s.name == "lr-x-width"
    trials = expand(s, BASE)
    assert [t.params for t in trials] == [
        {"train.learning_rate": 0.001, "train.kernels": [8, 16], "train.epochs": 2},
        {"train.learning_rate": 0.001, "train.kernels": [16, 32], "train.epochs": 2},
        {"train.learning_rate": 0.01, "train.kernels": [8, 16], "train.epochs": 2},
        {"train.learning_rate": 0.01, "train.kernels": [16, 32], "train.epochs": 2},
    ]
    assert [t.index for t in trials] == [0, 1, 2, 3]
    t = trials[2]
    assert t.config.train.learning_rate == 0.01 and t.config.train.kernels == [8, 16] and t.config.train.epochs == 2
    assert t.config.train.batch_size == BASE.train.batch_size  # the rest comes from the base config


def test_grid_run_cap_keeps_the_first_trials_and_wandb_style_names_are_aliases():
    s = sweep("""
method: grid
parameters:
  learning_rate: {values: [0.001, 0.002, 0.003]}
  batch_size: {values: [16, 32]}
run_cap: 4
""")
    assert s.metric == Metric("test_accuracy", "maximize")  # default: the evaluation's accuracy
    trials = expand(s, BASE)
    assert len(trials) == 4 and trials[0].params == {"train.learning_rate": 0.001, "train.batch_size": 16}


def test_random_sampling_is_seeded_reproducible_and_inside_the_ranges():
    text = """
method: random
parameters:
  train.learning_rate: {min: 0.0001, max: 0.1, distribution: log_uniform_values}
  train.batch_size: {min: 16, max: 256}
  train.seed: {values: [1, 2, 3]}
  train.epochs: {min: 1, max: 10, distribution: q_uniform, q: 2}
run_cap: 6
seed: 7
"""
    a, b = expand(sweep(text), BASE), expand(sweep(text), BASE)
    assert [t.params for t in a] == [t.params for t in b] and len(a) == 6
    for t in a:
        p = t.params
        assert 0.0001 <= p["train.learning_rate"] <= 0.1
        assert isinstance(p["train.batch_size"], int) and 16 <= p["train.batch_size"] <= 256
        assert p["train.seed"] in (1, 2, 3) and p["train.epochs"] % 2 == 0
    other = expand(sweep(text.replace("seed: 7", "seed: 8")), BASE)
    assert [t.params for t in other] != [t.params for t in a]


def test_random_over_a_small_space_gives_distinct_trials_only():
    trials = expand(sweep("method: random\nparameters: {train.seed: {values: [1, 2]}}\nrun_cap: 5"), BASE)
    assert sorted(t.params["train.seed"] for t in trials) == [1, 2]


@pytest.mark.parametrize("text, message", [
    ("method: bayes\nparameters: {train.seed: {values: [1]}}", "method 'bayes' is not supported"),
    ("method: hyperband\nparameters: {train.seed: {values: [1]}}", "method: should be 'grid' or 'random', got 'hyperband'"),
    ("method: grid\nprogram: train.py\nparameters: {train.seed: {values: [1]}}", "'program' is not supported"),
    ("method: grid\nlearning_rate: 3\nparameters: {train.seed: {values: [1]}}", "sweep: unknown key 'learning_rate'"),
    ("method: grid\nparameters: {train.optimizer: {values: [sgd]}}", "unknown parameter path 'train.optimizer'"),
    ("method: grid\nparameters: {data.slice: {values: [1, 2]}}", "unknown parameter path 'data.slice'"),
    ("method: grid\nparameters: {train.seed: {values: []}}", "values must be a non-empty list"),
    ("method: grid\nparameters: {train.seed: {values: [1, 1]}}", "duplicate value(s) 1"),
    ("method: grid\nparameters: {}", "give at least one parameter"),
    ("method: grid\nparameters: {train.seed: {values: [1], value: 2}}", "exactly one of values, value or min/max"),
    ("method: grid\nparameters: {train.seed: {values: [1], probabilities: [1]}}", "unknown key 'probabilities'"),
    ("method: grid\nparameters: {train.learning_rate: {min: 0.001, max: 0.1}}", "a grid sweep needs values"),
    ("method: random\nparameters: {train.seed: {values: [1]}}", "a random sweep needs run_cap"),
    ("method: random\nrun_cap: 2\nparameters: {train.learning_rate: {min: 0.001, max: 0.1, distribution: normal}}",
     "distribution 'normal' is not supported"),
    ("method: random\nrun_cap: 2\nparameters: {train.learning_rate: {min: 0, max: 0.1, "
     "distribution: log_uniform_values}}", "needs min > 0"),
    ("method: random\nrun_cap: 2\nparameters: {train.batch_size: {min: 8.5, max: 9, distribution: int_uniform}}",
     "int_uniform needs integer min and max"),
    ("method: random\nrun_cap: 2\nparameters: {train.batch_size: {min: 9, max: 8}}", "min 9 is larger than max 8"),
    ("method: grid\nrun_cap: 0\nparameters: {train.seed: {values: [1]}}", "run_cap: should be greater than 0, got 0"),
    ("method: grid\nmetric: {name: val_acc, goal: maximize}\nparameters: {train.seed: {values: [1]}}",
     "metric.name: should be 'test_accuracy' or 'test_loss', got 'val_acc'"),
    ("method: grid\nmetric: {name: test_loss, goal: lowest}\nparameters: {train.seed: {values: [1]}}",
     "metric.goal: should be 'maximize' or 'minimize', got 'lowest'"),
    ("method: grid\nmetric: {name: test_loss, target: 0.1}\nparameters: {train.seed: {values: [1]}}",
     "metric: unknown key 'target'"),
    ("method: grid\nearly_terminate: {type: hyperband}\nparameters: {train.seed: {values: [1]}}",
     "'early_terminate' is not supported"),
    ("method: grid\nparameters: {learning_rate: {values: [1]}, train.learning_rate: {values: [2]}}",
     "are the same parameter train.learning_rate"),
    ("- 1\n- 2", "must be a mapping"),
])
def test_unsupported_or_malformed_sweeps_are_refused_with_one_line(text, message):
    with pytest.raises(SweepError) as e:
        sweep(text)
    assert message in str(e.value) and "\n" not in str(e.value)


RANDOM = "method: random\nrun_cap: 2\n"


@pytest.mark.parametrize("text, message", [
    # each shape takes only its own keys, and only its own distribution
    ("method: grid\nparameters: {train.seed: {values: [1, 2], q: 1}}",
     "parameters.train.seed: unknown key 'q' (allowed: values, distribution)"),
    ("method: grid\nparameters: {train.seed: {value: 1, max: 3}}",
     "parameters.train.seed: unknown key 'max' (allowed: value, distribution)"),
    ("method: grid\nparameters: {train.seed: {values: [1], distribution: uniform}}",
     "parameters.train.seed.distribution: should be 'categorical', got 'uniform'"),
    ("method: grid\nparameters: {train.seed: {value: 1, distribution: categorical}}",
     "parameters.train.seed.distribution: should be 'constant', got 'categorical'"),
    (RANDOM + "parameters: {train.seed: {min: 1, max: 3, distribution: categorical}}",
     "parameters.train.seed.distribution: should be 'uniform', 'int_uniform', 'log_uniform_values', 'q_uniform' or "
     "'q_log_uniform_values', got 'categorical'"),
    ("method: grid\nparameters: {train.seed: 3}",
     "parameters.train.seed: give exactly one of values, value or min/max, got 3"),
    ("method: grid\nparameters: {train.seed: {values: 3}}", "parameters.train.seed.values: must be a list, got 3"),
    ("method: grid\nparameters: {train.kernels: {values: [[8, 16], [8, 16]]}}",
     "parameters.train.kernels: duplicate value(s) [8, 16]"),
    ("method: grid\nparameters: {learning_rate: {min: 0.001, max: 0.1}}",
     "parameters: 'learning_rate' is a range: a grid sweep needs values (or value) for every parameter"),
    ("method: grid\nparameters: {3: {values: [1]}}", "parameters: unknown parameter path '3'"),
    ("method: grid\nparameters: [train.seed]", "parameters: should be a valid dictionary, got ['train.seed']"),
    ("method: grid", "parameters: give at least one parameter"),
    ("parameters: {train.seed: {values: [1]}}", "method: missing (required)"),
    # a range: two finite numbers (not bools), q a positive number of a q_ distribution
    (RANDOM + "parameters: {train.seed: {max: 3}}", "parameters.train.seed.min: missing (required)"),
    (RANDOM + "parameters: {train.seed: {min: one, max: 3}}",
     "parameters.train.seed.min: must be a finite number, got 'one'"),
    (RANDOM + "parameters: {train.learning_rate: {min: 0.1, max: .inf}}",
     "parameters.train.learning_rate.max: must be a finite number, got inf"),
    (RANDOM + "parameters: {train.seed: {min: true, max: 3}}",
     "parameters.train.seed.min: must be a finite number, got True"),
    (RANDOM + "parameters: {train.seed: {min: 1, max: 9, q: 2}}",
     "parameters.train.seed: q must be a positive number, and only with q_uniform or q_log_uniform_values"),
    (RANDOM + "parameters: {train.seed: {min: 1, max: 9, q: 0, distribution: q_uniform}}",
     "parameters.train.seed: q must be a positive number, and only with q_uniform or q_log_uniform_values"),
    (RANDOM + "parameters: {train.learning_rate: {min: 0.1, max: 1, distribution: q_log_uniform_values, q: x}}",
     "parameters.train.learning_rate.q: must be a finite number, got 'x'"),
    (RANDOM + "parameters: {learning_rate: {min: 1, max: 2, distribution: log_uniform}}",
     "parameters.learning_rate: distribution 'log_uniform' is not supported: W&B's log_uniform takes exponents of e"),
    # the top level and the metric
    ("method: random\nrun_cap: 1001\nparameters: {train.seed: {values: [1]}}",
     "run_cap: should be less than or equal to 1000, got 1001"),
    ("method: random\nrun_cap: true\nparameters: {train.seed: {values: [1]}}",
     "run_cap: should be a valid integer, got True"),
    ("method: grid\nseed: -1\nparameters: {train.seed: {values: [1]}}",
     "seed: should be greater than or equal to 0, got -1"),
    ("method: grid\nname: 3\nparameters: {train.seed: {values: [1]}}", "name: should be a valid string, got 3"),
    ("method: grid\nmetric: test_loss\nparameters: {train.seed: {values: [1]}}",
     "metric: must be a mapping of keys (name, goal), got 'test_loss'"),
    ("method: grid\nmetric: {goal: minimize}\nparameters: {train.seed: {values: [1]}}",
     "metric.name: missing (required)"),
    ("method: grid\nentity: me\nparameters: {train.seed: {values: [1]}}",
     "sweep: 'entity' is not supported: give the W&B entity with --wandb-entity"),
    ("", "sweep: must be a mapping of keys (method, metric, parameters, run_cap, seed, name, description), got None"),
])
def test_the_models_name_the_key_and_the_problem_in_one_line(text, message):
    with pytest.raises(SweepError) as e:
        sweep(text)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_checked_sweep_records_and_revalidates_as_it_is():
    s = sweep("""
method: random
metric: {name: test_loss}
parameters:
  learning_rate: {min: 0.001, max: 0.1, distribution: log_uniform_values}
  batch_size: {min: 16, max: 64}
  train.kernels: {value: [8, 16]}
  train.epochs: {min: 1, max: 10, distribution: q_uniform, q: 2}
run_cap: 3
""")
    assert s.metric == Metric("test_loss", "minimize")  # W&B's default goal
    assert s.to_dict() == {
        "method": "random", "metric": {"name": "test_loss", "goal": "minimize"}, "run_cap": 3, "seed": 0,
        "name": None, "description": None,
        "parameters": {"train.learning_rate": {"min": 0.001, "max": 0.1, "distribution": "log_uniform_values"},
                       "train.batch_size": {"min": 16, "max": 64, "distribution": "int_uniform"},  # inferred
                       "train.kernels": {"values": [[8, 16]]},
                       "train.epochs": {"min": 1, "max": 10, "distribution": "q_uniform", "q": 2}}}
    assert type(s).model_validate(s.model_dump()) == s
    assert type(s).model_validate_json(s.model_dump_json()) == s
    assert [t.params for t in expand(type(s).model_validate_json(s.model_dump_json()), BASE)] == \
        [t.params for t in expand(s, BASE)]
    with pytest.raises(ValueError):
        Metric("val_acc", "maximize")


@pytest.mark.parametrize("params, message", [
    ("train.learning_rate: {values: [0.01, -1]}", "trial 1 (train.learning_rate=-1): train.learning_rate: "),
    ("train.kernels: {values: [[16, 32], [16]]}", "trial 1 (train.kernels=[16]): train.kernels: "),
    ("train.kernels: {values: [[0, 32]]}", "every kernel count must be positive"),
    ("train.epochs: {values: [1, two]}", "trial 1 (train.epochs=two): train.epochs: "),
])
def test_a_value_that_fails_the_config_validation_is_named_before_any_work(params, message):
    s = sweep(f"method: grid\nparameters:\n  {params}")
    with pytest.raises(SweepError) as e:
        expand(s, BASE)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_sweep_reads_yaml_and_json_and_names_unreadable_files(tmp_path):
    (tmp_path / "s.json").write_text('{"method": "grid", "parameters": {"train.seed": {"values": [1, 2]}}}')
    assert len(expand(load_sweep(tmp_path / "s.json"), BASE)) == 2
    (tmp_path / "bad.yaml").write_text("method: grid\nparameters: {train.seed: [1, 2\n")
    with pytest.raises(SweepError, match="not valid YAML/JSON at line"):
        load_sweep(tmp_path / "bad.yaml")
    with pytest.raises(SweepError, match="cannot read sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("method: grid\nparameters: {train.seed: {values: []}}\n")
    with pytest.raises(SweepError) as e:
        load_sweep(tmp_path / "empty.yaml")
    assert str(e.value) == f"{tmp_path / 'empty.yaml'}: parameters.train.seed: values must be a non-empty list, got []"
    (tmp_path / "top.yaml").write_text("method: bayes\nparameters: {train.seed: {values: [1]}}\n")
    with pytest.raises(SweepError) as e:
        load_sweep(tmp_path / "top.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'top.yaml'}: method 'bayes' is not supported: ")


def test_rank_orders_by_the_metric_goal_and_leaves_failed_trials_out():
    results = [TrialResult(0, {}, "finished", {"test_accuracy": 0.8, "test_loss": 0.5}),
               TrialResult(1, {}, "failed", None, "RuntimeError: boom"),
               TrialResult(2, {}, "reused", {"test_accuracy": 0.9, "test_loss": 0.7}),
               TrialResult(3, {}, "finished", {"test_accuracy": 0.9, "test_loss": 0.4})]
    assert [r.index for r in rank(results, Metric("test_accuracy", "maximize"))] == [2, 3, 0]
    assert rank(results, Metric("test_loss", "minimize"))[0].index == 3
    assert rank([results[1]], Metric("test_loss", "minimize")) == []


def test_the_readme_example_sweep_file_expands_to_four_trials():
    from pathlib import Path

    trials = expand(load_sweep(Path(__file__).resolve().parents[1] / "examples" / "sweep.yaml"), BASE)
    assert len(trials) == 4 and {t.config.train.seed for t in trials} == {0}
