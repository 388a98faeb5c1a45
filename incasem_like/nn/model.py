"""The U-Net family: the ASEM 3D U-Net (Funke-style) and its 2D, anisotropic, 2.5D, batch-norm and residual
variants, all with valid convolutions, max-pool down, nearest-neighbour up and cropped skips.

Default (the method's network): 1 input channel, 32 feature maps x2 per level, 3 downsamplings by 2, two 3x3x3
convolutions per level, input 204^3 -> output 110^3, 5,836,865 parameters. Per level, the kernel and the pooling
factor are set per axis (z, y, x): 1x3x3 kernels with 1x2x2 pooling make a slice-wise 2D network, 1x3x3 at the
top and 3x3x3 below an anisotropic one; `input_slices` lets the first convolution see neighbouring z slices
(2.5D: in a slice-wise network they are its input channels).

As in funlib's U-Net, each upsampled map is cropped so that its size minus the following convolutions' shrinkage
is a multiple of the downsampling below it: the network is then translation-equivariant for shifts by its total
downsampling factor (tiles of a large volume predicted separately agree with one pass), which blockwise
prediction relies on. So does the choice of what is offered: valid convolutions only (no 'same' padding, whose
zeros would depend on where a tile ends) and batch normalization with its statistics frozen at inference
(instance, group or layer norm would normalize each tile by its own statistics). Both are refused with the
reason.
"""

import copy
import math
from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import nn

from incasem_like.core.bounds import STRICT, Edges
from incasem_like.core.errors import UserError

Triple = Edges


def triple(values) -> Triple:
    """Three values (z, y, x) as a `Triple`."""
    z, y, x = values
    return (z, y, x)


#: normalizations whose statistics come from each tile: blockwise output would depend on the block layout
PER_TILE_NORMALIZATIONS = ("instance", "group", "layer")


class NetworkConfig(BaseModel):
    """Architecture; the defaults are the method's network. Per-level lists run from the top level down."""

    model_config = STRICT

    feature_maps: int = Field(32, ge=1, le=4096, description="feature maps at the top level")
    feature_map_factor: int = Field(2, ge=1, le=16, description="feature maps multiply by this per level")
    downsamplings: int = Field(3, ge=0, le=6, description="max-pool downsamplings")
    downsample_factors: list[Triple] | None = Field(
        None, description="per downsampling, the pooling factor per axis (z, y, x); default 2, 2, 2 each"
    )
    kernel_sizes: list[Triple] | None = Field(
        None, description="per level (downsamplings + 1 of them), the convolution kernel per axis; default 3, 3, 3"
    )
    final_kernel_size: Triple | None = Field(None, description="the last convolution's kernel; default the top's")
    normalization: Literal["none", "batch"] = Field(
        "none", description="none (the method) or batch: batch norm, its statistics frozen at inference"
    )
    residual: bool = Field(False, description="each level's two convolutions as a residual block")
    input_slices: int = Field(
        1, ge=1, le=255, description="z slices the first convolution sees beyond its kernel (odd)"
    )
    padding: Literal["valid"] = "valid"
    input_shape: Triple = (204, 204, 204)

    @field_validator("normalization", mode="before")
    @classmethod
    def _no_per_tile_statistics(cls, value):
        if isinstance(value, str) and value.lower().replace("_norm", "") in PER_TILE_NORMALIZATIONS:
            raise ValueError(
                f"{value} normalization uses each tile's own statistics, so a blockwise prediction would depend on "
                "the block layout; use batch (statistics frozen at inference) or none"
            )
        return value

    @field_validator("padding", mode="before")
    @classmethod
    def _valid_only(cls, value):
        if value != "valid":
            raise ValueError(
                f"{value!r} padding fills each tile's border with zeros, so a blockwise prediction would depend on "
                "the block layout; only valid convolutions are offered (predict supplies the context)"
            )
        return value

    @field_validator("input_slices")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"input_slices {value} must be odd (as many slices above as below the output)")
        return value

    @model_validator(mode="after")
    def _per_level_lists(self) -> "NetworkConfig":
        if self.downsample_factors is not None and len(self.downsample_factors) != self.downsamplings:
            raise ValueError(
                f"downsample_factors lists {len(self.downsample_factors)} factors for {self.downsamplings} "
                "downsamplings; give one [z, y, x] per downsampling"
            )
        if self.kernel_sizes is not None and len(self.kernel_sizes) != self.downsamplings + 1:
            raise ValueError(
                f"kernel_sizes lists {len(self.kernel_sizes)} kernels for {self.downsamplings + 1} levels; give one "
                "[z, y, x] per level (downsamplings + 1)"
            )
        for kernel in [*(self.kernel_sizes or []), *([self.final_kernel_size] if self.final_kernel_size else [])]:
            if min(kernel) < 1 or any(k % 2 == 0 for k in kernel):
                raise ValueError(f"kernel {list(kernel)}: every kernel edge must be odd and positive")
        if any(min(factor) < 1 for factor in self.downsample_factors or []):
            raise ValueError("downsample_factors: every factor must be at least 1")
        return self

    # --- the architecture, resolved --------------------------------------------------------------------------
    def factors(self) -> list[Triple]:
        return list(self.downsample_factors or [(2, 2, 2)] * self.downsamplings)

    def kernels(self) -> list[Triple]:
        return list(self.kernel_sizes or [(3, 3, 3)] * (self.downsamplings + 1))

    def final_kernel(self) -> Triple:
        return triple(self.final_kernel_size or self.kernels()[0])

    def first_kernel(self) -> Triple:
        """The first convolution's kernel: the top level's, `input_slices - 1` deeper in z."""
        kz, ky, kx = self.kernels()[0]
        return (kz + self.input_slices - 1, ky, kx)

    def total_factor(self) -> Triple:
        """The downsampling factor per axis: shifts by multiples of it leave the output equivariant."""
        return triple(math.prod(factor[axis] for factor in self.factors()) for axis in range(3))

    def architecture(self) -> dict:
        """What the weights depend on (everything but the input shape)."""
        return self.model_dump(mode="json", exclude={"input_shape"}) | {
            "downsample_factors": [list(f) for f in self.factors()],
            "kernel_sizes": [list(k) for k in self.kernels()],
            "final_kernel_size": list(self.final_kernel()),
        }

    def sees_axis(self, axis: int) -> bool:
        """Whether the network looks along `axis` (a slice-wise 2D network does not look along z)."""
        return (
            self.first_kernel()[axis] > 1
            or self.total_factor()[axis] > 1
            or any(k[axis] > 1 for k in [*self.kernels(), self.final_kernel()])
        )

    # --- shapes ----------------------------------------------------------------------------------------------
    def output_shape(self, input_shape: tuple[int, ...] | None = None) -> Triple:
        """Output edge lengths for `input_shape` (default the training input); UserError if one is not valid."""
        shape = tuple(input_shape or self.input_shape)
        outputs = []
        for axis, edge in enumerate(shape):
            output = self._output_edge(edge, axis)
            if output is None:
                raise UserError(
                    f"network input edge {edge} does not fit a U-Net with {self.downsamplings} downsamplings of "
                    f"{[f[axis] for f in self.factors()]} along {'zyx'[axis]}; valid edges near it: "
                    f"{', '.join(map(str, self.valid_input_edges(edge, axis=axis)))}"
                )
            outputs.append(output)
        return triple(outputs)

    def context(self) -> Triple:
        """Voxels of input needed on each side of the output."""
        return triple((i - o) // 2 for i, o in zip(self.input_shape, self.output_shape()))

    def valid_input_edges(self, near: int, count: int = 4, axis: int = 0) -> list[int]:
        """The `count` valid input edge lengths along `axis` closest to `near`."""
        span = 2 * near + 2 * self.total_factor()[axis] * 16
        candidates = sorted(range(1, span), key=lambda e: (abs(e - near), e))
        return sorted([edge for edge in candidates if self._output_edge(edge, axis) is not None][:count])

    def input_edge_for(self, output_at_least: int, axis: int = 0) -> int:
        """The smallest valid input edge along `axis` whose output edge is at least `output_at_least`."""
        edge = output_at_least
        while (self._output_edge(edge, axis) or 0) < output_at_least:
            edge += 1
        return edge

    def _output_edge(self, edge: int, axis: int) -> int | None:
        """Output edge length for an input edge, None where a max-pool would meet a size it does not divide or
        the input and output would not be centred on each other."""
        kernels = [k[axis] for k in self.kernels()]
        factors = [f[axis] for f in self.factors()]
        size = edge - (self.first_kernel()[axis] - kernels[0])
        for level in range(self.downsamplings):
            size -= _pair_shrink(kernels[level])
            if size <= 0 or size % factors[level]:
                return None
            size //= factors[level]
        size -= _pair_shrink(kernels[-1])
        if size <= 0:
            return None
        for level in reversed(range(self.downsamplings)):
            size = _crop_to_factor(size * factors[level], math.prod(factors[level:]), kernels[level])
            size -= _pair_shrink(kernels[level])
            if size <= 0:
                return None
        size -= self.final_kernel()[axis] - 1
        return size if size > 0 and (edge - size) % 2 == 0 else None

    def parameter_count(self) -> int:
        return sum(p.numel() for p in UNet3D(self).parameters())


def _pair_shrink(kernel: int) -> int:
    """Voxels two valid convolutions of `kernel` remove from an edge."""
    return 2 * (kernel - 1)


def _crop_to_factor(size: int, factor: int, kernel: int) -> int:
    """Largest size <= `size` whose part left after the next two convolutions is a multiple of `factor`."""
    shrink = _pair_shrink(kernel)
    return (size - shrink) // factor * factor + shrink


def _center_crop(tensor: torch.Tensor, shape) -> torch.Tensor:
    (oz, oy, ox), (sz, sy, sx) = [(have - want) // 2 for have, want in zip(tensor.shape[-3:], shape)], shape
    return tensor[..., oz : oz + sz, oy : oy + sy, ox : ox + sx]


class ConvBlock(nn.Module):
    """Two valid convolutions, each followed by batch norm (if asked for) and ReLU; as a residual block the input,
    cropped (and projected by a 1x1x1 convolution where the channels differ), is added before the last ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: Triple, first_kernel: Triple, batch_norm: bool, residual: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for index, (channels, size) in enumerate(((c_in, first_kernel), (c_out, kernel))):
            layers.append(nn.Conv3d(channels, c_out, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm3d(c_out))
            if not (residual and index == 1):
                layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.projection = nn.Conv3d(c_in, c_out, 1) if residual and c_in != c_out else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if not self.residual:
            return out
        skip = self.projection(x) if self.projection is not None else x
        return torch.relu_(out + _center_crop(skip, out.shape[-3:]))


def _plain_pair(c_in: int, c_out: int, kernel: Triple, first_kernel: Triple) -> nn.Sequential:
    """The method's two convolutions + ReLU (module names as in checkpoints written before the options existed)."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, first_kernel),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, kernel),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """float32 (N, 1, z, y, x) -> foreground logits (N, 1, z', y', x')."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        maps = [c.feature_maps * c.feature_map_factor**level for level in range(c.downsamplings + 1)]
        kernels = c.kernels()

        def block(c_in: int, c_out: int, kernel: Triple, first: Triple | None = None) -> nn.Module:
            first = first or kernel
            if c.normalization == "none" and not c.residual:
                return _plain_pair(c_in, c_out, kernel, first)
            return ConvBlock(c_in, c_out, kernel, first, c.normalization == "batch", c.residual)

        self.down = nn.ModuleList(
            block(c_in, c_out, kernels[level], c.first_kernel() if level == 0 else None)
            for level, (c_in, c_out) in enumerate(zip([1, *maps[:-1]], maps))
        )
        self.up = nn.ModuleList(
            block(maps[level] + maps[level + 1], maps[level], kernels[level]) for level in range(c.downsamplings)
        )
        self.final = nn.Conv3d(maps[0], 1, c.final_kernel())

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(raw))

    def encode(self, raw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The bottleneck features and the skip features of each level above it."""
        factors = self.config.factors()
        skips = []
        features = raw
        for level, convs in enumerate(self.down):
            features = convs(features)
            if level < self.config.downsamplings:
                skips.append(features)
                features = nn.functional.max_pool3d(features, factors[level])
        return features, skips

    def decode(self, features: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Foreground logits from the bottleneck and skip features (`encode`)."""
        factors, kernels = self.config.factors(), self.config.kernels()
        for level in reversed(range(self.config.downsamplings)):
            upsampled = nn.functional.interpolate(features, scale_factor=factors[level], mode="nearest")
            below = [math.prod(f[axis] for f in factors[level:]) for axis in range(3)]
            cropped = [_crop_to_factor(s, f, k) for s, f, k in zip(upsampled.shape[-3:], below, kernels[level])]
            upsampled = _center_crop(upsampled, cropped)
            features = self.up[level](torch.cat([_center_crop(skips[level], upsampled.shape[-3:]), upsampled], dim=1))
        return self.final(features)


def unet3d(**architecture) -> UNet3D:
    """A `UNet3D` from `NetworkConfig.architecture()`'s keywords (how a bioimage.io package names our network)."""
    return UNet3D(NetworkConfig.model_validate(architecture))


class ReconstructionDecoder(nn.Module):
    """A second decoder for semi-supervised training (Dyhr et al.): the input image from a `UNet3D`'s bottleneck
    features alone (no skip connections, which would hand the image over), upsampled level by level through
    two convolutions each ('same' padding: it never predicts) to bottleneck size x the total downsampling factor,
    the centre of the input (`reconstruction_target`). Training only: checkpoints keep it apart from the model,
    and prediction and export never see it."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        if config.downsamplings < 1:
            raise UserError(
                "semi_supervised: a reconstruction decoder needs a network with a bottleneck; set "
                "network.downsamplings to 1 or more"
            )
        self.config = config
        maps = [config.feature_maps * config.feature_map_factor**level for level in range(config.downsamplings + 1)]
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(maps[level + 1], maps[level], kernel, padding=triple(k // 2 for k in kernel)),
                nn.ReLU(inplace=True),
                nn.Conv3d(maps[level], maps[level], kernel, padding=triple(k // 2 for k in kernel)),
                nn.ReLU(inplace=True),
            )
            for level, kernel in enumerate(config.kernels()[:-1])
        )
        self.final = nn.Conv3d(maps[0], 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for level in reversed(range(self.config.downsamplings)):
            features = nn.functional.interpolate(features, scale_factor=self.config.factors()[level], mode="nearest")
            features = self.up[level](features)
        return self.final(features)


def reconstruction_target(raw: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """The centre of the network input that a `ReconstructionDecoder`'s output shows (what the bottleneck saw)."""
    return _center_crop(raw, reconstruction.shape[-3:])


def inference_model(model: UNet3D) -> UNet3D:
    """A copy for prediction: in eval mode, each batch norm (frozen statistics) folded into the convolution before
    it, so a pass costs what the network without normalization costs, and each convolution that does not reach
    along z run as a 2D convolution over the slices (`PlaneConv`). The outputs equal the model's in eval mode up
    to float rounding."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBlock):
            layers = list(module.convs)
            kept: list[nn.Module] = []
            for layer in layers:
                if isinstance(layer, nn.BatchNorm3d):
                    conv = kept[-1]
                    assert isinstance(conv, nn.Conv3d)  # batch norm follows a convolution
                    kept[-1] = _fold_batch_norm(conv, layer)
                else:
                    kept.append(layer)
            module.convs = nn.Sequential(*kept)
    for module in list(fused.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Conv3d) and child.kernel_size[0] == 1:
                setattr(module, name, PlaneConv(child))
    return fused


class PlaneConv(nn.Module):
    """A valid convolution of kernel (1, ky, kx) as the 2D convolution it is, each slice an image of the batch:
    CPUs run 2D convolutions faster, and on channels-last tensors the slices are views (nothing is copied)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, z, height, width = x.shape
        planes = x.permute(0, 2, 1, 3, 4).reshape(n * z, channels, height, width)
        out = nn.functional.conv2d(planes, self.weight[:, :, 0], self.bias)
        return out.reshape(n, z, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def _fold_batch_norm(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> nn.Conv3d:
    assert norm.running_mean is not None and norm.running_var is not None  # frozen statistics are tracked
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    folded = nn.Conv3d(conv.in_channels, conv.out_channels, triple(conv.kernel_size), bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        assert folded.bias is not None
        folded.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return folded
