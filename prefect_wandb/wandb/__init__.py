"""The W&B boundary: the only package of the project that imports wandb, one job per module.

- `folder`: where wandb writes its run folders (the one rule; imports no wandb, so preflight may ask it);
- `credentials`: which host and key W&B would use, and why (`resolve_credentials`), and the stage's mode
  (`resolve_mode`);
- `settings`: how long W&B may take (`WandbTimeouts`) and the `wandb.Settings` of a run bounded by them;
- `stage_run`: one stage's W&B run (`start_run` -> `StageRun`), online when asked and reachable, else offline with a
  warning, and the process-wide memory of a failed host. W&B is an observer: after `start_run`, no exception from
  W&B leaves `StageRun`; each failed call is one warning line and one `WandbGap`, which the stage records in the
  lineage store for `sync`;
- `run_file`: the records of an offline run's `.wandb` file (what `wandb sync` uploads);
- `temp`: wandb's temporary folders of this process (which a process killed -9 leaves, `leftovers.py`);
- `client`: `WandbClient`, the real W&B for `sync` and `audit --online`, implementing the
  `WandbBackend` Protocol of `sync.py` (`recording.RecordingWandb` implements it too, in memory).

This file imports nothing: each caller imports the module it needs, so that asking where wandb writes or reading a
run file does not pay for importing wandb.
"""
