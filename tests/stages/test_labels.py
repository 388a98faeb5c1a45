import re
from functools import partial

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.ops.morphology import clean_labels, dilate_labels, metric_mask
from incasem_like.stages.labels import CleanLabelsStage, known_organelles, load_organelle, organelle_config_dir
from incasem_like.store.datasets import DatasetPath, dataset_meta, open_dataset
from tests import conftest
from tests.conftest import SHARED_DATA, run_cli, run_cli_in_process
from tests.toy_stages import SlowCleanLabelsStage, SlowDilateLabelsStage, SlowMetricMaskStage, kill_midway

write_dataset = partial(conftest.write_dataset, offset=(0, 50, 100), chunk=16)


read = conftest.read_dataset


def synthetic_labels(shape=(32, 40, 48), seed=1) -> np.ndarray:
    """Instance labels (uint16) of blobs of many sizes, with one-voxel specks and pinholes."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2)
    foreground = field > np.quantile(field, 0.7)
    foreground ^= rng.random(shape) > 0.995  # specks outside, pinholes inside
    foreground[8:20, 8:20, 8:20] = True  # a big object with a 27-voxel hole across a block corner
    foreground[15:18, 15:18, 15:18] = False
    labels, _ = ndimage.label(foreground)
    return labels.astype(np.uint16)


def padded(function, volume: np.ndarray, context: int) -> np.ndarray:
    """The pure function on the whole volume, zero outside (as the blocks at the border see it)."""
    return function(np.pad(volume, context))[(slice(context, -context or None),) * 3]


#: operation -> (command-line parameters, slow stage, its parameters, whole-volume function, context)
OPERATIONS = {
    "clean": (
        ["--organelle", "mito", "--min-hole-voxels", 40],
        SlowCleanLabelsStage,
        dict(organelle="mito", min_object_voxels=27, min_hole_voxels=40),
        lambda v: clean_labels(v, 27, 40),
        26 + 39,
    ),
    "dilate": (
        ["--organelle", "golgi"],
        SlowDilateLabelsStage,
        dict(organelle="golgi", voxels=3),
        lambda v: dilate_labels(v, 3),
        3,
    ),
    "metric-mask": (
        ["--organelle", "nuclear_pore"],
        SlowMetricMaskStage,
        dict(organelle="nuclear_pore", dilation_voxels=3, erosion_voxels=1),
        lambda v: metric_mask(v, 3, 1),
        3,
    ),
}


def test_organelle_defaults_are_the_methods():
    assert known_organelles() == ["ccp", "er", "golgi", "mito", "nuclear_pore"]
    found = {
        name: (c.clean.min_object_voxels, c.clean.min_hole_voxels, c.dilate_voxels, c.metric_mask.dilation_voxels, e)
        for name in known_organelles()
        for c in [load_organelle(name)]
        for e in [c.metric_mask.erosion_voxels]
    }
    assert found == {
        "mito": (27, 0, 1, 4, 4),
        "golgi": (27, 0, 3, 2, 2),
        "er": (0, 20000, 0, 1, 1),
        "ccp": (0, 0, 0, 3, 1),
        "nuclear_pore": (0, 0, 0, 3, 1),
    }
    assert organelle_config_dir().is_dir()


VALID = (organelle_config_dir() / "mito.yaml").read_text()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("nucleus", None, "unknown organelle 'nucleus'; known: bad, ccp, er"),
        ("bad", "organelle: bad\nclean: [1, 2\n", "bad.yaml: not valid YAML at line 3"),
        ("bad", "- just a list\n", "bad.yaml: expected a mapping of keys"),
        ("bad", VALID.replace("mito", "bad").replace("voxels: 27", "voxels: -1"), "clean.min_object_voxels = -1"),
        (
            "bad",
            VALID.replace("mito", "bad").replace("dilate_voxels", "dilation"),
            "dilation: unknown key (the keys here: organelle, clean, dilate_voxels, metric_mask)",
        ),
        (
            "bad",
            VALID.replace("metric_mask:", "metric_mask:\n  erosion: 2"),
            "metric_mask.erosion: unknown key; did you mean 'erosion_voxels'?",
        ),
        ("bad", VALID.replace("dilate_voxels: 1", "dilate_voxels: one"), "dilate_voxels = 'one'"),
        ("bad", VALID, "organelle = 'mito' does not match the file name"),
    ],
)
def test_bad_organelle_config_is_named_in_one_line(tmp_path, name, text, message):
    folder = tmp_path / "configs/organelles"
    folder.mkdir(parents=True)
    for organelle in known_organelles():
        (folder / f"{organelle}.yaml").write_text((organelle_config_dir() / f"{organelle}.yaml").read_text())
    (folder / "bad.yaml").write_text(text or VALID.replace("mito", "bad"))
    with pytest.raises(UserError, match=re.escape(message)) as error:
        load_organelle(name, folder)
    assert "\n" not in str(error.value)


def test_bad_config_fails_the_command_with_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "configs/organelles"
    folder.mkdir(parents=True)
    (folder / "mito.yaml").write_text(VALID.replace("erosion_voxels: 4", "erosion_voxels: [4]"))
    labels = write_dataset(tmp_path / "c.zarr/volumes/labels/mito", np.zeros((8, 8, 8), np.uint8), chunk=8)
    monkeypatch.setenv("INCASEM_LIKE_CONFIGS", str(tmp_path / "configs"))

    result = run_cli(
        "labels", "metric-mask", labels, tmp_path / "c.zarr/volumes/metric_masks/mito", "--organelle", "mito"
    )

    assert result.returncode == 2
    assert f"{folder / 'mito.yaml'}: metric_mask.erosion_voxels = [4]" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.zarr/volumes/metric_masks").exists()


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_blocks_of_any_size_give_the_whole_volume_result_also_after_a_resume(tmp_path, operation):
    """Blocks of 16 killed midway and resumed and (for clean, whose components may cross many blocks) blocks of
    32 in one run: all the whole-volume result. (Dilation and erosion only need their radius of context.)"""
    options, slow_stage, params, function, context = OPERATIONS[operation]
    volume = synthetic_labels()
    volume = volume if operation == "clean" else (volume > 0).astype(np.uint8)
    labels = write_dataset(tmp_path / "cell.zarr/volumes/labels/x", volume)
    assert slow_stage(input=str(labels), output=str(labels) + "_", **params).context_voxels() == context
    expected = padded(function, volume, context)
    outputs = {block: tmp_path / f"cell.zarr/volumes/out_{block}" for block in (16, 32)}
    if operation == "clean":
        result = run_cli("labels", operation, labels, outputs[32], *options, "--block", 32, "--chunk", 16, "--quiet")
        assert result.returncode == 0, result.stderr
    else:
        del outputs[32]
    kill_midway(slow_stage(input=str(labels), output=str(outputs[16]), **params, block=16, chunk=16), 2, 0.5)
    resumed = run_cli(
        "labels", operation, labels, outputs[16], *options, "--block", 16, "--chunk", 16, "--workers", 2, "--quiet"
    )

    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stdout.split(" skipped")[0].split()[-1])
    assert 2 <= skipped < 2 * 3 * 3, resumed.stdout
    for out in outputs.values():
        output = open_dataset(out)
        assert output.dtype == np.uint8 and output.offset_nm == (0, 50, 100)
        np.testing.assert_array_equal(output[output.roi], expected, err_msg=str(out))
    meta = dataset_meta(DatasetPath.parse(outputs[16]))
    assert meta["kind"] == ("mask" if operation == "metric-mask" else "labels")
    assert {key: meta["source"][slow_stage.task_name][key] for key in params} == params
    if operation == "clean":  # the clean-up did something: specks removed, pinholes filled
        assert (expected < (volume > 0)).sum() > 10 and (expected > (volume > 0)).sum() > 10
        assert volume[16, 16, 16] == 0 and expected[16, 16, 16] == 1  # the hole across the block corner


def test_roi_and_overrides(tmp_path):
    volume = (synthetic_labels() > 0).astype(np.uint8)
    labels = write_dataset(tmp_path / "cell.zarr/volumes/labels/er", volume)
    out = tmp_path / "cell.zarr/volumes/metric_masks/er"

    result = run_cli(
        "labels", "metric-mask", labels, out, "--organelle", "er", "--dilation", 2, "--roi", 4, 8, 12, 16, 16, 32
    )

    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read(out), metric_mask(volume, 2, 1)[4:20, 8:24, 12:44])
    source = dataset_meta(DatasetPath.parse(out))["source"]["labels_metric_mask"]
    assert (source["organelle"], source["dilation_voxels"], source["erosion_voxels"]) == ("er", 2, 1)


def test_default_context_follows_the_sizes():
    stage = CleanLabelsStage(input="c.zarr/volumes/labels/er", output="c.zarr/volumes/labels/er_clean")
    assert stage.context_voxels() == 0
    assert stage.model_copy(update={"min_object_voxels": 27}).context_voxels() == 26
    assert stage.model_copy(update={"min_hole_voxels": 20000}).context_voxels() == 64
    assert stage.model_copy(update={"min_object_voxels": 27, "min_hole_voxels": 20000}).context_voxels() == 26 + 64
    assert stage.model_copy(update={"min_hole_voxels": 20000, "max_span": 100}).context_voxels() == 100


@pytest.mark.parametrize(
    "operation, setup, extra, message",
    [
        ("clean", "missing", [], "no such dataset"),
        ("dilate", "float32", [], "dtype float32 is not supported by labels_dilate (needs uint8 or uint16"),
        ("metric-mask", "ok", ["--roi", 0, 0, 0, 17, 8, 8], "lies outside"),
        ("clean", "existing", [], "pass --overwrite"),
        ("dilate", "ok", ["--organelle", "nucleus"], "unknown organelle 'nucleus'; known: ccp, er, golgi, mito,"),
        ("metric-mask", "no organelle", ["--erosion", 1], "give --organelle NAME (known: ccp, er, golgi, mito"),
        ("clean", "ok", ["--min-hole-voxels", -1], "--min-hole-voxels -1: "),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, operation, setup, extra, message, capsys):
    volume = (synthetic_labels((16, 16, 16)) > 0).astype(np.float32 if setup == "float32" else np.uint8)
    labels = tmp_path / "cell.zarr/volumes/labels/mito"
    if setup != "missing":
        write_dataset(labels, volume)
    out = tmp_path / "cell.zarr/volumes/out"
    if setup == "existing":
        write_dataset(out, np.full((16, 16, 16), 7, np.uint8))
    organelle = [] if setup == "no organelle" or "--organelle" in extra else ["--organelle", "mito"]

    result = run_cli_in_process(
        capsys, "labels", operation, labels, out, *organelle, "--chunk", 16, "--block", 16, *extra
    )

    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if setup == "existing":
        assert (read(out) == 7).all()
    else:
        assert not DatasetPath.parse(out).exists()


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_help_shows_examples(operation, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["labels", operation, "--help"])
    assert exit_.value.code == 0
    assert f"incasem-like labels {operation} " in capsys.readouterr().out.split("examples:")[1]


@pytest.mark.slow
def test_lucchi_mito_labels_end_to_end(tmp_path):
    """The mito defaults on a crop of the real annotation, blocks 64 vs the whole-volume functions."""
    labels = tmp_path / "cell.zarr/volumes/labels/mito"
    src = SHARED_DATA / "lucchi_pp_train/mito"
    result = run_cli("convert", src, labels, "--voxel-size", 5, 5, 5, "--labels", "--roi", 0, 0, 0, 96, 256, 256)
    assert result.returncode == 0, result.stderr
    volume = read(labels)
    steps = [
        ("clean", "volumes/labels/mito_clean", lambda v: clean_labels(v, 27, 0), 26),
        ("dilate", "volumes/labels/mito_dilated", lambda v: dilate_labels(v, 1), 1),
        ("metric-mask", "volumes/metric_masks/mito", lambda v: metric_mask(v, 4, 4), 4),
    ]
    for operation, name, function, context in steps:
        out = tmp_path / "cell.zarr" / name
        options = ["--organelle", "mito", "--block", 64, "--chunk", 64, "--workers", 2, "--quiet"]
        result = run_cli("labels", operation, labels, out, *options)
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(read(out), padded(function, volume, context), err_msg=operation)
    assert 0.03 < volume.mean() < 0.15
    assert 0.0 < 1 - read(tmp_path / "cell.zarr/volumes/metric_masks/mito").mean() < 0.5
