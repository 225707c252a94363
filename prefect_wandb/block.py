"""`LineageBlock`: the lineage settings kept in a Prefect block, as Prefect integrations keep theirs, so every
deployment and worker of a team reads the same store, artifacts folder and W&B project by name:

    LineageBlock(settings=LineageSettings(store=..., artifacts=...)).save("team")     # once
    settings = LineageBlock.load("team").settings                                     # in a flow
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from prefect_wandb.settings import LineageSettings


class LineageBlock(Block):
    """Where a flow's lineage goes: the lineage store, the artifacts folder, W&B's project, entity and mode, the
    code whose git state is recorded. No secret is kept here (W&B keys are wandb's own settings)."""

    _block_type_name = "Wandb Lineage"
    _block_type_slug = "wandb-lineage"
    _description = "Where a flow's artifact lineage goes: the prefect_wandb lineage store, artifacts and W&B project."

    settings: LineageSettings = Field(default_factory=LineageSettings, description="The lineage settings.")
