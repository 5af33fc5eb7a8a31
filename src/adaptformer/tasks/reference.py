"""Import the tuned weights of a checkpoint written by the paper's reference code."""

from __future__ import annotations

from pathlib import Path

from ..adapted.model import AdaptedModel
from ..backbones.checkpoints import read_state_dict


def import_reference_checkpoint(model: AdaptedModel, path: str | Path, task: str | None = None) -> list[str]:
    """Load the tuned keys of a reference AdaptFormer checkpoint (``{'model': state_dict}`` with
    ``blocks.N.adaptmlp.*``, ``head.*``, ``embeddings.N``) into a task (the active one by default); everything
    else in the file (its backbone copy, optimizer state) is ignored. Returns the keys loaded."""
    state = read_state_dict(path)
    own = model.task_state_dict(task)
    kept = {k: v for k, v in state.items() if k in own}
    model.load_task_state(kept, task, path)
    return sorted(kept)
