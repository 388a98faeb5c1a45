"""`Predictor`: passes in fixed-size batches give each pass the same bits whatever shares its batch."""

import numpy as np
import torch

from incasem_like.nn.inference import NO_TTA, Predictor, default_batch, tta_variants
from incasem_like.nn.model import NetworkConfig, UNet3D, inference_model

NETWORK = NetworkConfig(feature_maps=3, downsamplings=2, input_shape=(52, 52, 52))  # 52 -> 10, factor 4


def regions(predictor: Predictor, *outputs: tuple[int, int, int]) -> list[torch.Tensor]:
    """Random inputs of regions whose passes cover at least `outputs`, with their context."""
    generator = np.random.default_rng(0)
    shapes = [[c + 2 * k for c, k in zip(predictor.covered_shape(o), predictor.context)] for o in outputs]
    return [torch.from_numpy(generator.uniform(-1, 1, size=shape).astype(np.float32)) for shape in shapes]


def test_a_region_gets_the_same_bits_alone_or_sharing_batches_with_others():
    torch.manual_seed(0)
    model = inference_model(UNet3D(NETWORK))
    input_shape = (NETWORK.input_edge_for(8),) * 3
    first, second = regions(Predictor(model, input_shape, torch.device("cpu")), (8, 8, 16), (8, 8, 8))
    for variants in (NO_TTA, tta_variants(NETWORK, "mirror", transposable=True)):
        predictor = Predictor(model, input_shape, torch.device("cpu"), variants=variants, batch=3)
        together = list(predictor.outputs([first, second]))
        alone = [next(iter(predictor.outputs([region]))) for region in (first, second)]
        single = Predictor(model, input_shape, torch.device("cpu"), variants=variants, batch=1)

        for a, b in zip(together, alone):
            assert torch.equal(a, b)
        # another batch size computes the same function (to float rounding, not bit for bit)
        torch.testing.assert_close(together[0], next(iter(single.outputs([first]))), atol=1e-5, rtol=0)
        assert together[0].shape == predictor.covered_shape((8, 8, 16)) and len(together) == 2


def test_default_batch_fills_a_gpu_and_keeps_a_cpu_to_a_pass_s_variants():
    assert default_batch("cuda", 1, (222, 222, 222)) == 3
    assert default_batch("cuda", 8, (512, 512, 512)) == 1  # at least one
    assert default_batch("cpu", 1, (52, 52, 52)) == 1
    assert default_batch("cpu", 8, (52, 52, 52)) == 8 and default_batch("cpu", 8, (300, 300, 300)) == 1
