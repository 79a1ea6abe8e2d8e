"""Checkpoint staging folders: a checkpoint is written into checkpoints/.<name>.<32 hex>.tmp and renamed into place;
replacing one retires the old copy as <staging>.old until the new one is in place. A stopped run can leave either."""
import os
import re
import shutil
import uuid

STAGING_NAME = re.compile(r'\.(?P<name>.+)\.[0-9a-f]{32}\.tmp(?P<retired>\.old)?')  # checkpoints being written


def staging_folder(checkpoints: str, name: str) -> str:
    """A new, unused staging path for checkpoint `name`: .<name>.<32 hex>.tmp (its retired twin adds .old)."""
    return os.path.join(checkpoints, f'.{name}.{uuid.uuid4().hex}.tmp')


def interrupted_swap(target: str) -> str | None:
    """When a kill stopped the replacement of `target` between its two renames (no `target`, a retired twin):
    the complete copy to use, the new one if present, else the old one; None otherwise."""
    checkpoints, name = os.path.split(target)
    if os.path.isdir(target) or not os.path.isdir(checkpoints):
        return None
    for entry in sorted(os.listdir(checkpoints)):
        found = STAGING_NAME.fullmatch(entry)
        if found and found['name'] == name and found['retired']:
            retired = os.path.join(checkpoints, entry)
            return retired[:-len('.old')] if os.path.isdir(retired[:-len('.old')]) else retired
    return None


def tidy_checkpoints(checkpoints: str) -> tuple[list[str], int]:
    """With the experiment's lock: finish the swaps a kill interrupted (an .old folder that is the only complete copy
    is renamed back, never deleted), then delete what stopped saves left. Returns the checkpoints put back in place
    and the number of staging folders deleted."""
    if not os.path.isdir(checkpoints):
        return [], 0
    entries = sorted(os.listdir(checkpoints))
    restored = []
    for entry in entries:
        found = STAGING_NAME.fullmatch(entry)
        if found and found['retired']:
            target = os.path.join(checkpoints, found['name'])
            complete = interrupted_swap(target)
            if complete is not None:
                os.replace(complete, target)
                restored.append(found['name'])
    removed = 0
    for entry in entries:
        if STAGING_NAME.fullmatch(entry) and os.path.isdir(os.path.join(checkpoints, entry)):
            shutil.rmtree(os.path.join(checkpoints, entry))  # half-written staging, or a retired old checkpoint
            removed += 1
    return restored, removed
