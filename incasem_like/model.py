"""The ASEM 3D U-Net (Funke-style): valid 3x3x3 convolutions, max-pool down, nearest-neighbour up, cropped skips.

Default: 1 input channel, 32 feature maps x2 per level, 3 downsamplings by 2, input 204^3 -> output 110^3,
5,836,865 parameters. As in funlib's U-Net, each upsampled map is cropped so that its size minus the following
convolutions' shrinkage is a multiple of the downsampling below it: the network is then translation-equivariant
(tiles of a large volume predicted separately agree with one pass) and 204 -> 110 as in the paper.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from incasem_like.errors import UserError

#: voxels each pair of valid 3x3x3 convolutions removes from a map's edge length
CONV_PAIR_SHRINK = 4
#: the final 3x3x3 valid convolution
FINAL_SHRINK = 2


class NetworkConfig(BaseModel):
    """Architecture; the defaults are the method's network."""

    model_config = ConfigDict(extra="forbid")

    feature_maps: int = Field(32, ge=1, description="feature maps at the top level")
    feature_map_factor: int = Field(2, ge=1, description="feature maps multiply by this per level")
    downsamplings: int = Field(3, ge=0, le=6, description="max-pool downsamplings by 2")
    input_shape: tuple[int, int, int] = (204, 204, 204)

    def output_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, int, int]:
        """Output edge lengths for `input_shape` (default the training input); UserError if one is not valid."""
        shape = tuple(input_shape or self.input_shape)
        outputs = tuple(self._output_edge(edge) for edge in shape)
        for edge, output in zip(shape, outputs):
            if output is None:
                raise UserError(
                    f"network input edge {edge} does not fit a U-Net with {self.downsamplings} downsamplings; "
                    f"valid edges near it: {', '.join(map(str, self.valid_input_edges(edge)))}"
                )
        return outputs

    def context(self) -> tuple[int, int, int]:
        """Voxels of input needed on each side of the output."""
        return tuple((i - o) // 2 for i, o in zip(self.input_shape, self.output_shape()))

    def valid_input_edges(self, near: int, count: int = 4) -> list[int]:
        """The `count` valid input edge lengths closest to `near`."""
        candidates = sorted(range(1, 2 * near + 2 ** (self.downsamplings + 4)), key=lambda e: (abs(e - near), e))
        return sorted([edge for edge in candidates if self._output_edge(edge) is not None][:count])

    def input_edge_for(self, output_at_least: int) -> int:
        """The smallest valid input edge whose output edge is at least `output_at_least`."""
        edge = output_at_least
        while (self._output_edge(edge) or 0) < output_at_least:
            edge += 1
        return edge

    def _output_edge(self, edge: int) -> int | None:
        """Output edge length for an input edge, None where a max-pool would meet an odd size."""
        size = edge
        for _ in range(self.downsamplings):
            size -= CONV_PAIR_SHRINK
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= CONV_PAIR_SHRINK
        for level in reversed(range(self.downsamplings)):
            size = _crop_to_factor(2 * size, 2 ** (self.downsamplings - level)) - CONV_PAIR_SHRINK
        size -= FINAL_SHRINK
        return size if size > 0 else None

    def parameter_count(self) -> int:
        return sum(p.numel() for p in UNet3D(self).parameters())


def _crop_to_factor(size: int, factor: int) -> int:
    """Largest size <= `size` whose part left after the next convolutions is a multiple of `factor`."""
    return (size - CONV_PAIR_SHRINK) // factor * factor + CONV_PAIR_SHRINK


def _conv_pair(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3),
        nn.ReLU(inplace=True),
    )


def _center_crop(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    offsets = [(have - want) // 2 for have, want in zip(tensor.shape[-3:], shape)]
    return tensor[(..., *(slice(o, o + s) for o, s in zip(offsets, shape)))]


class UNet3D(nn.Module):
    """float32 (N, 1, z, y, x) -> foreground logits (N, 1, z', y', x')."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        maps = [
            self.config.feature_maps * self.config.feature_map_factor**level
            for level in range(self.config.downsamplings + 1)
        ]
        self.down = nn.ModuleList(_conv_pair(c_in, c_out) for c_in, c_out in zip([1, *maps[:-1]], maps))
        self.up = nn.ModuleList(
            _conv_pair(maps[level] + maps[level + 1], maps[level]) for level in range(self.config.downsamplings)
        )
        self.final = nn.Conv3d(maps[0], 1, 3)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        skips = []
        features = raw
        for level, convs in enumerate(self.down):
            features = convs(features)
            if level < self.config.downsamplings:
                skips.append(features)
                features = nn.functional.max_pool3d(features, 2)
        for level in reversed(range(self.config.downsamplings)):
            upsampled = nn.functional.interpolate(features, scale_factor=2, mode="nearest")
            factor = 2 ** (self.config.downsamplings - level)
            upsampled = _center_crop(upsampled, [_crop_to_factor(s, factor) for s in upsampled.shape[-3:]])
            features = self.up[level](torch.cat([_center_crop(skips[level], upsampled.shape[-3:]), upsampled], dim=1))
        return self.final(features)
