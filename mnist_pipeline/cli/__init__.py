"""`mnist-pipeline`: the pipeline's own commands (run, show-config, serve, sweep) and the library's operator
commands (audit, sync, impact, reproduce, rollback, unreject, gc, keygen, verify) on its records."""
