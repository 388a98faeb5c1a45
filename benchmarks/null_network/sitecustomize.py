"""Start-up hook of benchmarks/host_path.py: a Python process that has this folder on PYTHONPATH (the benchmark's
`incasem-like predict` and each of its daisy workers) and INCASEM_LIKE_NULL_NETWORK=1 in its environment loads
`NullNetwork` wherever `predict` loads the checkpoint's U-Net, so the network costs nothing and what is timed is the
rest of the path."""

import os

import torch


class NullNetwork(torch.nn.Module):
    """The centre of the input, cropped to the output shape of `config`'s U-Net."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        output = self.config.output_shape(tuple(raw.shape[-3:]))
        begin = [(i - o) // 2 for i, o in zip(raw.shape[-3:], output)]
        return raw[(..., *(slice(b, b + o) for b, o in zip(begin, output)))]


if os.environ.get("INCASEM_LIKE_NULL_NETWORK") == "1":
    from incasem_like.stages import predict

    checkpoint_model = predict.model_from_checkpoint

    def null_model(path):
        model, state = checkpoint_model(path)
        return NullNetwork(model.config), state

    predict.model_from_checkpoint = null_model
