"""incasem's trained checkpoints as our U-Net, exactly.

incasem (incasem/torch/models/unet.py) wraps funlib.learn.torch's `UNet` as `unet` and adds `final_conv_pass`, a
funlib `ConvPass` of one valid 3x3x3 convolution to 2 classes with no activation (`Identity`); its predictions are
the softmax of the two. gunpowder's torch `Train` node saves `{"model_state_dict", "optimizer_state_dict"}` as
`model_checkpoint_N`. funlib's UNet, as incasem builds it (one head, constant upsampling, 'valid' padding), is our
`UNet3D`: per level `l_conv.L.conv_pass.{0,2}` (two valid convolutions, each followed by ReLU) -> `down.L.{0,2}`,
max-pooling, nearest-neighbour upsampling without weights, the upsampled map cropped to the downsampling factor
below it (minus the next convolutions' shrinkage), the skip centre-cropped to it and concatenated before it,
`r_conv.0.L.conv_pass.{0,2}` -> `up.L.{0,2}`. The foreground's softmax probability is sigmoid(l1 - l0): the
final convolution's class-1 minus class-0 weights and biases make our one logit.

Everything but the downsampling factors is read from the tensors' shapes; constant upsampling leaves no trace of
the factors, which are incasem's 2, 2, 2 per level unless given.
"""

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from incasem_like.core.errors import UserError
from incasem_like.nn.model import NetworkConfig, Triple, triple

#: prefix of `--checkpoint incasem:PATH` and `--from incasem:PATH`
INCASEM_PREFIX = "incasem:"
#: incasem's downsampling per level (scripts/02_train/config_training.yaml)
INCASEM_FACTOR = (2, 2, 2)
_CONV = re.compile(r"(?:unet\.)?(l_conv|r_conv\.(\d+))\.(\d+)\.conv_pass\.(\d+)\.weight$")


def is_incasem_state(state) -> bool:
    """Whether a loaded checkpoint is one of gunpowder's torch `Train` node (incasem's)."""
    return isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict)


def incasem_network(
    weights: dict[str, torch.Tensor], path: str | Path, factors: Sequence[Triple] | None = None
) -> NetworkConfig:
    """The `NetworkConfig` of an incasem checkpoint's weights (their key names and shapes); `factors` per
    downsampling (default incasem's 2, 2, 2). UserError naming the key where no U-Net of ours has these
    tensors."""
    levels: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    for key, tensor in weights.items():
        if re.search(r"(?:^|\.)r_up\.\d+\.\d+\.up\.weight$", key):
            raise UserError(
                f"{path}: {key}: a U-Net upsampling by transposed convolutions (funlib constant_upsample=False); only "
                "incasem's constant upsampling is read; retrain with constant_upsample: true"
            )
        match = _CONV.match(key)
        if match:
            side, head, level, index = match[1], match[2], int(match[3]), int(match[4])
            if head not in (None, "0"):
                raise UserError(f"{path}: {key}: a U-Net with several heads; only one head (num_heads 1) is read")
            levels.setdefault("down" if side == "l_conv" else "up", {}).setdefault(level, {})[index] = tensor
    down, up = levels.get("down", {}), levels.get("up", {})
    final = _final_weight(weights, path)
    if not down or sorted(down) != list(range(len(down))) or sorted(up) != list(range(len(down) - 1)):
        raise UserError(
            f"{path}: no funlib U-Net in its model_state_dict (keys unet.l_conv.L.conv_pass.I.weight for levels "
            f"0..N, unet.r_conv.0.L... for 0..N-1; found levels {sorted(down)} and {sorted(up)}); give a checkpoint "
            "of incasem's Unet"
        )
    kernels = []
    for level in range(len(down)):
        convs = [down[level], *([up[level]] if level < len(up) else [])]
        shapes = {tuple(conv.get(i, torch.empty(0)).shape[2:]) for conv in convs for i in (0, 2)}
        if any(sorted(conv) != [0, 2] for conv in convs) or len(shapes) != 1:
            raise UserError(
                f"{path}: level {level} of the U-Net is not two convolutions of one kernel (convolutions "
                f"{[sorted(conv) for conv in convs]}, kernels {sorted(shapes)}); only incasem's default "
                "kernel_size_down/up (two per level) are read"
            )
        kernels.append(triple(shapes.pop()))
    maps = [int(down[level][0].shape[0]) for level in range(len(down))]
    if int(down[0][0].shape[1]) != 1:
        raise UserError(
            f"{path}: unet.l_conv.0.conv_pass.0.weight: {down[0][0].shape[1]} input channels; our U-Net reads one"
        )
    factor = maps[1] // maps[0] if len(maps) > 1 else 2
    if maps != [maps[0] * factor**level for level in range(len(maps))]:
        raise UserError(f"{path}: feature maps {maps} per level are not num_fmaps x fmap_inc_factor^level")
    try:
        return NetworkConfig(
            feature_maps=maps[0],
            feature_map_factor=factor,
            downsamplings=len(maps) - 1,
            downsample_factors=list(factors) if factors is not None else [INCASEM_FACTOR] * (len(maps) - 1),
            kernel_sizes=kernels,
            final_kernel_size=triple(final.shape[2:]),
        )
    except ValueError as error:
        raise UserError(f"{path}: {str(error).splitlines()[-1].strip()}") from None


def _final_weight(weights: dict[str, torch.Tensor], path: str | Path) -> torch.Tensor:
    final = weights.get("final_conv_pass.conv_pass.0.weight")
    if final is None or "final_conv_pass.conv_pass.0.bias" not in weights:
        raise UserError(
            f"{path}: no final_conv_pass.conv_pass.0.weight/bias in its model_state_dict: not incasem's Unet "
            "(a funlib UNet + final ConvPass); give a checkpoint of incasem's Unet"
        )
    if final.shape[0] != 2:
        raise UserError(
            f"{path}: final_conv_pass.conv_pass.0.weight has {final.shape[0]} output classes; only two (background, "
            "foreground) make one organelle's logit"
        )
    return final


def incasem_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """incasem's weights under our `UNet3D`'s names (float32), the two classes' logits as their difference."""
    ours = {}
    for key, tensor in weights.items():
        match = _CONV.match(key.removesuffix(".weight").removesuffix(".bias") + ".weight")
        if match is None:
            continue
        kind = key.rsplit(".", 1)[1]
        side = "down" if match[1] == "l_conv" else "up"
        ours[f"{side}.{match[3]}.{match[4]}.{kind}"] = tensor.float()
    for kind in ("weight", "bias"):
        classes = weights[f"final_conv_pass.conv_pass.0.{kind}"].float()
        ours[f"final.{kind}"] = (classes[1] - classes[0])[None]
    return ours


def incasem_checkpoint(path: str | Path, state: dict, factors: Sequence[Triple] | None = None) -> dict:
    """An incasem checkpoint's content as ours (see `nn.checkpoints`): the network, the weights, raw normalized by
    bit depth to [-1, 1] as incasem's pipelines did (uint8 / 255, x 2 - 1); no optimizer state (its last layer is
    not ours), no voxel size (incasem's checkpoints record none)."""
    weights = state["model_state_dict"]
    network = incasem_network(weights, path, factors)
    iteration = re.search(r"_checkpoint_(\d+)$", Path(path).name)
    return {
        "network": network.model_dump(mode="json"),
        "model": incasem_weights(weights),
        "optimizer": None,
        "iteration": int(iteration[1]) if iteration else None,
        "organelle": None,
        "voxel_size": None,
        "raw_normalization": {"mode": "bit_depth"},
        "provenance": {"converted_from": f"incasem checkpoint {path}"},
    }
