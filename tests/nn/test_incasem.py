"""incasem checkpoints (funlib UNet + final ConvPass, saved by gunpowder's torch Train node) read as our U-Net:
the same foreground probability as a reference forward written from funlib's definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from incasem_like.core.errors import UserError
from incasem_like.nn.checkpoints import model_from_checkpoint, resolve_checkpoint
from incasem_like.nn.model import NetworkConfig

MAPS, FACTOR, LEVELS = 2, 2, 3


def incasem_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of incasem's Unet(num_fmaps 2, fmap_inc_factor 2,
    downsample_factors [[2, 2, 2]] x 2, constant_upsample, num_fmaps_out 2)."""
    generator = torch.Generator().manual_seed(seed)
    maps = [MAPS * FACTOR**level for level in range(LEVELS)]
    weights = {}

    def conv(prefix: str, c_in: int, c_out: int) -> None:
        weights[f"{prefix}.weight"] = torch.randn(c_out, c_in, 3, 3, 3, generator=generator) * 0.3
        weights[f"{prefix}.bias"] = torch.randn(c_out, generator=generator) * 0.1

    for level, c_out in enumerate(maps):
        conv(f"unet.l_conv.{level}.conv_pass.0", 1 if level == 0 else maps[level - 1], c_out)
        conv(f"unet.l_conv.{level}.conv_pass.2", c_out, c_out)
    for level in range(LEVELS - 1):
        conv(f"unet.r_conv.0.{level}.conv_pass.0", maps[level] + maps[level + 1], maps[level])
        conv(f"unet.r_conv.0.{level}.conv_pass.2", maps[level], maps[level])
    conv("final_conv_pass.conv_pass.0", MAPS, 2)
    return weights


def centre(tensor: torch.Tensor, shape) -> torch.Tensor:
    offsets = [(have - want) // 2 for have, want in zip(tensor.shape[2:], shape)]
    return tensor[(..., *(slice(o, o + s) for o, s in zip(offsets, shape)))]


def reference_foreground(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """funlib's UNet.rec_forward and incasem's final pass, then softmax's class 1, from the tensors alone."""

    def pass_(prefix: str, features: torch.Tensor) -> torch.Tensor:
        for index in (0, 2):
            weight, bias = weights[f"{prefix}.{index}.weight"], weights[f"{prefix}.{index}.bias"]
            features = F.relu(F.conv3d(features, weight, bias))
        return features

    def level(depth: int, features: torch.Tensor) -> torch.Tensor:
        left = pass_(f"unet.l_conv.{depth}.conv_pass", features)
        if depth == LEVELS - 1:
            return left
        below = level(depth + 1, F.max_pool3d(left, 2))
        up = F.interpolate(below, scale_factor=2, mode="nearest")
        factor = 2 ** (LEVELS - 1 - depth)  # product of the factors from this level down
        target = [math.floor((s - 4) / factor) * factor + 4 for s in up.shape[2:]]  # two 3^3 convolutions follow
        up = centre(up, target)
        return pass_(f"unet.r_conv.0.{depth}.conv_pass", torch.cat([centre(left, target), up], dim=1))

    final = "final_conv_pass.conv_pass.0"
    classes = F.conv3d(level(0, x), weights[f"{final}.weight"], weights[f"{final}.bias"])
    return torch.softmax(classes, dim=1)[:, 1:]


def save_incasem(path, weights) -> None:
    torch.save({"model_state_dict": weights, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)


def test_an_incasem_checkpoint_predicts_as_its_reference(tmp_path):
    weights = incasem_state_dict()
    path = tmp_path / "model_checkpoint_100"
    save_incasem(path, weights)
    model, state = model_from_checkpoint(resolve_checkpoint(f"incasem:{path}"))
    assert (
        model.config.architecture()
        == NetworkConfig(feature_maps=MAPS, downsamplings=LEVELS - 1, input_shape=(92, 92, 92)).architecture()
    )
    assert state["iteration"] == 100 and state["raw_normalization"] == {"mode": "bit_depth"}
    shape = [model.config.input_edge_for(output) for output in (9, 17, 5)]  # a different output edge per axis
    x = torch.rand(1, 1, *shape) * 2 - 1
    with torch.no_grad():  # the 2-class softmax and the sigmoid of one logit agree up to float32 rounding
        ours = torch.sigmoid(model(x))
        reference = reference_foreground(weights, x)
    assert ours.shape == reference.shape == (1, 1, 10, 18, 6)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: w.pop("final_conv_pass.conv_pass.0.weight"), "no final_conv_pass.conv_pass.0.weight"),
        (lambda w: w.update({"unet.r_up.0.0.up.weight": torch.zeros(1)}), "transposed convolutions"),
        (
            lambda w: w.update({"final_conv_pass.conv_pass.0.weight": torch.zeros(3, MAPS, 3, 3, 3)}),
            "3 output classes",
        ),
        (lambda w: w.pop("unet.l_conv.1.conv_pass.2.weight"), "level 1 of the U-Net is not two convolutions"),
    ],
)
def test_a_checkpoint_that_fits_no_unet_is_named(tmp_path, edit, message):
    weights = incasem_state_dict()
    edit(weights)
    path = tmp_path / "model_checkpoint_7"
    save_incasem(path, weights)
    with pytest.raises(UserError, match=message) as error:
        model_from_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
