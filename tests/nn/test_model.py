import re

import numpy as np
import pytest
import torch

from incasem_like.core.errors import UserError
from incasem_like.nn.inference import predict_region
from incasem_like.nn.model import NetworkConfig, PlaneConv, UNet3D, inference_model


def test_asem_network_sizes_and_parameter_count():
    network = NetworkConfig()
    assert network.output_shape() == (110, 110, 110)
    assert network.context() == (47, 47, 47)
    assert network.parameter_count() == 5_836_865  # "about 5.8 M"
    assert network.output_shape((212, 220, 228)) == (118, 126, 134)  # larger prediction blocks, same context


def test_asem_network_forward_gives_the_computed_shape():
    model = UNet3D()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 116, 124, 132))
    assert tuple(out.shape) == (1, 1, *NetworkConfig().output_shape((116, 124, 132))) == (1, 1, 22, 30, 38)


def test_invalid_input_shape_names_valid_ones():
    with pytest.raises(UserError, match=r"input edge 200 .* valid edges near it: .*196.*204"):
        NetworkConfig(input_shape=(200, 200, 200)).output_shape()


def test_configurable_small_network():
    network = NetworkConfig(feature_maps=4, downsamplings=1, input_shape=(28, 28, 28))
    assert network.output_shape() == (10, 10, 10)
    assert network.parameter_count() < 10_000


def test_tiled_prediction_equals_one_pass():
    """Translation equivariance: tiles of the training input agree with one network pass over a larger input."""
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(feature_maps=4, downsamplings=2, input_shape=(52, 52, 52)))  # context 21
    raw = np.random.default_rng(0).uniform(-1, 1, size=(68, 60, 76)).astype(np.float32)
    whole = predict_region(model, raw, raw.shape, torch.device("cpu"))
    tiled = predict_region(model, raw, (52, 52, 52), torch.device("cpu"))  # 10^3 tiles, the last ones overlap
    assert whole.shape == tiled.shape == (26, 18, 34)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_input_edge_for_an_output_step():
    asem = NetworkConfig()
    assert asem.input_edge_for(128) == 228 and asem.output_shape((228,) * 3) == (134, 134, 134)
    assert asem.input_edge_for(110) == 204
    small = NetworkConfig(feature_maps=4, downsamplings=2, input_shape=(52, 52, 52))
    edge = small.input_edge_for(64)
    assert small.output_shape((edge,) * 3)[0] >= 64 > small.output_shape((edge - 4,) * 3)[0]


#: one network per option of NetworkConfig (tiny: they run in a test), each with its own translation factor
OPTION_NETWORKS = {
    "batch norm": dict(feature_maps=3, downsamplings=2, normalization="batch", input_shape=(52, 52, 52)),
    "residual": dict(feature_maps=3, downsamplings=2, residual=True, input_shape=(52, 52, 52)),
    "slice-wise 2D": dict(
        feature_maps=3,
        downsamplings=2,
        downsample_factors=[(1, 2, 2), (1, 2, 2)],
        kernel_sizes=[(1, 3, 3)] * 3,
        normalization="batch",
        input_shape=(4, 52, 52),
    ),
    "anisotropic": dict(
        feature_maps=3,
        downsamplings=2,
        downsample_factors=[(1, 2, 2), (2, 2, 2)],
        kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)],
        input_shape=(30, 52, 52),
    ),
    "2.5D": dict(
        feature_maps=3,
        downsamplings=2,
        downsample_factors=[(1, 2, 2), (1, 2, 2)],
        kernel_sizes=[(1, 3, 3)] * 3,
        input_slices=5,
        input_shape=(5, 52, 52),
    ),
    "wider and deeper": dict(feature_maps=2, feature_map_factor=3, downsamplings=3, input_shape=(108, 108, 108)),
}


def trained_statistics(model: UNet3D) -> UNet3D:
    """`model` after a few training-mode passes, so batch norm holds statistics other than its initial ones."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(2, 1, *model.config.input_shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1)
    return model.eval()


@pytest.mark.parametrize("option", OPTION_NETWORKS)
def test_each_network_option_predicts_tiles_equal_to_one_pass(option):
    """Every option keeps the translation equivariance blockwise prediction rests on: tiles of the training input
    on the pass grid agree with one pass over the whole region (batch norm with its statistics frozen)."""
    torch.manual_seed(0)
    network = NetworkConfig(**OPTION_NETWORKS[option])
    model = inference_model(trained_statistics(UNet3D(network)))
    context = network.context()
    factor = network.total_factor()
    region = [2 * f * max(1, 8 // f) + 3 for f in factor]  # a few tiles, not a multiple of the tile
    edges = [network.input_edge_for(r, axis) for axis, r in enumerate(region)]
    raw = np.random.default_rng(0).uniform(-1, 1, size=edges).astype(np.float32)
    whole = predict_region(model, raw, tuple(edges), torch.device("cpu"))
    tiled = predict_region(model, raw, network.input_shape, torch.device("cpu"))
    assert whole.shape == tiled.shape == tuple(e - 2 * c for e, c in zip(edges, context))
    spread = whole.std()
    assert spread > 0  # not a constant output: a misplaced tile would differ by about this much
    np.testing.assert_allclose(tiled, whole, atol=1e-3 * spread)


@pytest.mark.parametrize("option", ["batch norm", "slice-wise 2D", "anisotropic"])
def test_inference_model_equals_the_model_in_eval_mode(option):
    """Batch norm folded into the convolutions, (1, k, k) convolutions run as 2D ones over the slices, on
    contiguous and channels-last input."""
    torch.manual_seed(0)
    network = NetworkConfig(**OPTION_NETWORKS[option])
    model = trained_statistics(UNet3D(network))
    fused = inference_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    kernels = network.kernels()
    depths = [network.first_kernel()[0], kernels[0][0], *(k[0] for k in kernels[1:] for _ in "ab")]  # down
    depths += [*(k[0] for k in kernels[:-1] for _ in "ab"), network.final_kernel()[0]]  # up, final
    assert sum(isinstance(m, PlaneConv) for m in fused.modules()) == depths.count(1)
    x = torch.randn(1, 1, *network.input_shape)
    with torch.no_grad():
        expected = model(x).numpy()
        np.testing.assert_allclose(fused(x).numpy(), expected, atol=1e-4)
        channels_last = fused.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
        np.testing.assert_allclose(channels_last.numpy(), expected, atol=1e-4)


def test_option_shapes_and_parameters():
    slice_wise = NetworkConfig(**OPTION_NETWORKS["slice-wise 2D"])
    assert slice_wise.context() == (0, 21, 21) and slice_wise.total_factor() == (1, 4, 4)
    assert not slice_wise.sees_axis(0) and slice_wise.sees_axis(1)
    two_and_a_half = NetworkConfig(**OPTION_NETWORKS["2.5D"])
    assert two_and_a_half.context() == (2, 21, 21) and two_and_a_half.sees_axis(0)
    one_slice = NetworkConfig(**{**OPTION_NETWORKS["2.5D"], "input_slices": 1, "input_shape": (1, 52, 52)})
    assert two_and_a_half.parameter_count() == one_slice.parameter_count() + 4 * 9 * 3  # 4 more slices in, 3 maps out
    residual = NetworkConfig(**OPTION_NETWORKS["residual"])
    assert residual.parameter_count() > NetworkConfig(feature_maps=3, downsamplings=2).parameter_count()
    # the method's network keeps its module names: checkpoints written before the options load
    assert "down.0.0.weight" in UNet3D().state_dict() and "final.weight" in UNet3D().state_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"normalization": "instance"}, "instance normalization uses each tile's own statistics"),
        ({"normalization": "group"}, "group normalization uses each tile's own statistics"),
        ({"padding": "same"}, "'same' padding fills each tile's border with zeros"),
        ({"input_slices": 4}, "input_slices 4 must be odd"),
        ({"kernel_sizes": [[3, 3, 3]] * 2}, "kernel_sizes lists 2 kernels for 4 levels"),
        ({"downsample_factors": [[2, 2, 2]]}, "downsample_factors lists 1 factors for 3 downsamplings"),
        ({"kernel_sizes": [[2, 3, 3]] * 4}, "every kernel edge must be odd"),
    ],
)
def test_options_that_would_make_the_output_depend_on_the_tile_are_refused(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        NetworkConfig(**change)
