import numpy as np
import pytest
import torch

from incasem_like.errors import UserError
from incasem_like.inference import predict_region
from incasem_like.model import NetworkConfig, UNet3D


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
