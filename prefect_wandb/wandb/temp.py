"""wandb's temporary folders of this process: made in $TMPDIR when wandb is imported (`tmp…wandb-media`, where
media is encoded before it is copied into a run, and `tmp…wandb-artifacts`, where artifact files are staged), and
removed by wandb's exit handler, so a process killed -9 leaves them. A process's first stage records them
(`leftovers.claim`) for the clean-up of what ended processes left."""

from __future__ import annotations

from pathlib import Path


def temp_folders() -> list[Path]:
    """This process's wandb temporary folders, as wandb names them now (none if a wandb release moved them)."""
    try:
        # private wandb API: `wandb.sdk.data_types._private.MEDIA_TMP` and `Artifact._TMP_DIR` are the
        # `tempfile.TemporaryDirectory` objects wandb makes at import; nothing public names them.
        from wandb.sdk.artifacts.artifact import Artifact
        from wandb.sdk.data_types._private import MEDIA_TMP

        return [Path(MEDIA_TMP.name), Path(Artifact._TMP_DIR.name)]
    except (ImportError, AttributeError):
        return []
