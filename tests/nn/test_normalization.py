import doctest

import numpy as np
import pytest

import incasem_like.nn.normalization
from incasem_like.core.errors import UserError
from incasem_like.nn.normalization import IntensityRange, NormalizationRule, checkpoint_rule, default_rule, normalize
from incasem_like.store.datasets import open_dataset
from tests.conftest import write_dataset


def test_docstring_examples():
    result = doctest.testmod(incasem_like.nn.normalization)
    assert result.attempted > 0 and result.failed == 0


def test_bit_depth_normalizes_as_models_trained_before_rules_were_recorded(tmp_path):
    """Unsigned raw: raw / (2^bits - 1) * 2 - 1 bit for bit, the bits of the values (12 here), so the models trained
    before normalization rules were recorded (checkpoints without one) see what they saw."""
    data = np.random.default_rng(0).integers(0, 4096, (8, 16, 16)).astype(np.uint16)
    volume = open_dataset(write_dataset(tmp_path / "c.zarr/raw", data, chunk=8))
    intensity = checkpoint_rule({}).range_of(volume)
    assert intensity == IntensityRange(0.0, 4095.0, clip=False)
    np.testing.assert_array_equal(normalize(data, intensity), (data.astype(np.float32) / 4095) * 2 - 1)


def test_percentiles_of_each_volume_normalize_another_acquisitions_scale_alike(tmp_path):
    """A tomogram and the same one at another scale and offset (another acquisition's units) reach the network
    alike; outliers beyond the percentiles are clipped."""
    rng = np.random.default_rng(1)
    first = rng.normal(size=(16, 24, 24)).astype(np.float32)
    first[3, 4, 5] = 500.0
    second = first * 3.0 + 40.0
    rule = NormalizationRule(mode="percentiles", percentiles=(1, 99))
    ranges = [
        rule.range_of(open_dataset(write_dataset(tmp_path / f"c.zarr/{i}", v))) for i, v in enumerate((first, second))
    ]
    width = float(first.max() - first.min()) / 2**16  # the histogram's bin width
    assert ranges[0].low == pytest.approx(np.percentile(first, 1), abs=width)
    assert ranges[0].high == pytest.approx(np.percentile(first, 99), abs=width)
    assert (ranges[1].low, ranges[1].high) == pytest.approx((ranges[0].low * 3 + 40, ranges[0].high * 3 + 40), rel=1e-5)
    normalized = [normalize(v, r) for v, r in zip((first, second), ranges)]
    np.testing.assert_allclose(normalized[0], normalized[1], atol=1e-4)
    assert normalized[0].min() == -1 and normalized[0].max() == 1 and normalized[0][3, 4, 5] == 1


def test_rules_by_dtype_and_what_they_accept():
    assert default_rule([np.dtype(np.uint8), np.dtype(np.uint16)]).mode == "bit_depth"
    assert default_rule([np.dtype(np.uint8), np.dtype(np.float32)]).mode == "percentiles"
    assert not NormalizationRule(mode="bit_depth").accepts(np.dtype(np.int16))
    assert NormalizationRule(mode="value_range", value_range=(-1, 1)).accepts(np.dtype(np.int16))
    assert not NormalizationRule(mode="percentiles").accepts(np.dtype(bool))
    fixed = NormalizationRule(mode="value_range", value_range=(-2, 2))
    assert fixed.range_of(None) == IntensityRange(-2, 2, clip=True)  # fixed values: no volume is read


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mode": "value_range"}, "value_range [LOW, HIGH] is given with mode value_range, and only then"),
        ({"mode": "value_range", "value_range": (2, 1)}, "value_range [2.0, 1.0]: LOW must be below HIGH"),
        ({"mode": "percentiles", "percentiles": (50, 50)}, "percentiles [50.0, 50.0]: the first must be below"),
        ({"mode": "percentiles", "percentiles": (1, 101)}, "less than or equal to 100"),
    ],
)
def test_bad_rules_are_refused(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        NormalizationRule.model_validate(fields)


def test_a_flat_volume_has_no_percentile_range(tmp_path):
    volume = open_dataset(write_dataset(tmp_path / "c.zarr/flat", np.full((8, 8, 8), 2.5, np.float32)))
    with pytest.raises(UserError, match="the image is flat; normalize by a fixed value_range instead"):
        NormalizationRule(mode="percentiles").range_of(volume)


def test_unclipped_rules_keep_the_values_beyond_their_range_and_are_recorded_as_such(tmp_path):
    data = np.arange(100, dtype=np.float32).reshape(4, 5, 5)
    rule = NormalizationRule(mode="percentiles", percentiles=(10, 90), clip=False)
    intensity = rule.range_of(open_dataset(write_dataset(tmp_path / "c.zarr/ramp", data, chunk=4)))
    assert intensity.clip is False and normalize(data, intensity).min() < -1 < 1 < normalize(data, intensity).max()
    assert rule.range_of_array(data, "ramp").clip is False and rule.text().endswith(", unclipped")
    assert NormalizationRule.model_validate(rule.model_dump(mode="json")) == rule
    assert "clip" not in NormalizationRule(mode="percentiles").model_dump()  # as recorded before the option
