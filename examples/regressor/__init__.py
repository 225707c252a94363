"""A second pipeline on `prefect_wandb`'s public API: synthetic house prices, features, ridge regression, an RMSE
gate, ONNX. `python -m examples.regressor --help`; the flow is `examples.regressor.flow.regressor_pipeline`,
the rebuild functions for `reproduce` are `examples.regressor.steps.REBUILDERS`."""
