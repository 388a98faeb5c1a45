"""Test-only hook for a training process: the checkpoint of one iteration is written in two halves with a long
pause between them, so a test can kill the process in the middle of writing it."""

import io
import time

import torch


def pause_while_writing_checkpoint(iteration: int) -> None:
    """Make this process's `torch.save` write the checkpoint of `iteration` half, then sleep."""
    real_save = torch.save

    def save(obj, file, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("iteration") == iteration):
            return real_save(obj, file, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        time.sleep(600)
        file.write(data[len(data) // 2 :])

    torch.save = save
