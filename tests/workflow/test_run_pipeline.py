"""`incasem-like run`: the shipped pipelines on the embedded sample with real stages, zarr and daisy workers;
resuming, reruns after changes, failures, and one-line errors for bad pipeline files."""

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.nn.models import bundled_model
from incasem_like.store.datasets import DatasetPath, is_complete, remove_dataset, update_dataset_meta
from incasem_like.workflow.demo import SAMPLE, demo_pipeline
from incasem_like.workflow.pipeline import load_pipeline, plan
from tests.conftest import REPO, interruptible, read_dataset, run_cli, write_slices
from tests.review.test_view import fetch

PIPELINES = REPO / "pipelines"
SAMPLE_DIR = Path(str(SAMPLE))
#: a crop of the sample: predict_cell takes ~35 s on it on 2 cores (most of it the prediction's one pass)
CROP = "0 128 128 32 128 128"  # a corner with mitochondria (15% of its voxels)
ORGANELLES = ("mito", "er", "golgi", "nuclear_pore", "ccp")


def summary(stdout: str) -> dict[str, tuple[str, str]]:
    """The summary table's rows: stage -> (status, output)."""
    lines = stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if line.lstrip().startswith("#  stage"))
    columns = lines[header].index("status"), lines[header].index("seconds"), lines[header].index("output")
    rows = {}
    for line in lines[header + 1 :]:
        if not line[:1].isdigit() and not line[:2].strip().isdigit():
            break
        rows[line.split()[1]] = (line[columns[0] : columns[1]].strip(), line[columns[2] :])
    return rows


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: relative path -> (size, modification time in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def predict_cell(cwd: Path, *extra) -> subprocess.CompletedProcess:
    return run_cli(
        "run",
        PIPELINES / "predict_cell.yaml",
        "--set",
        f"tiffs={SAMPLE_DIR / 'raw'}",
        "--set",
        f"roi={CROP}",
        "--set",
        "workers=1",
        "--quiet",
        *extra,
        cwd=cwd,
    )


def test_predict_cell_runs_skips_what_is_complete_and_reruns_only_what_is_missing(tmp_path):
    first = predict_cell(tmp_path)
    assert first.returncode == 0, first.stderr
    rows = summary(first.stdout)
    assert {stage: status for stage, (status, _) in rows.items()} == {
        "convert": "ran",
        "clahe": "ran",
        "mask": "ran",
        "predict_mito": "ran",
        **{f"predict_{organelle}": "not requested" for organelle in ORGANELLES[1:]},
        "objects_mito": "ran",
        "report": "ran",
        "view": "ran",
    }
    assert rows["predict_er"][1] == "--set er_checkpoint=... to run it"
    assert rows["predict_mito"][1] == "cell.zarr/volumes/predictions/run1/mito"
    # a progress line per stage, naming the command it runs
    assert (
        "[4/11] predict_mito: running: predict checkpoint=bundled:mito raw=cell.zarr/volumes/raw_clahe " in first.stdout
    )
    assert "neuroglancer: not served; rerun with --serve" in first.stdout.splitlines()[-1]
    container = tmp_path / "cell.zarr"
    segmentation = read_dataset(container / "volumes/predictions/run1/mito/segmentation")
    assert segmentation.shape == (32, 128, 128) and 0 < segmentation.mean() < 0.5
    mask = read_dataset(container / "volumes/masks/cell")

    before = files(container)
    again = predict_cell(tmp_path)
    assert again.returncode == 0, again.stderr
    statuses = {stage: status for stage, (status, _) in summary(again.stdout).items()}
    assert [stage for stage, status in statuses.items() if status == "skipped"] == [
        "convert",
        "clahe",
        "mask",
        "predict_mito",
        "objects_mito",
        "report",
    ]
    assert statuses["view"] == "ran"  # it only shows the datasets
    assert files(container) == before

    # One output deleted, one marked incomplete: only their stages run (the prediction resumes: its blocks are done).
    remove_dataset(DatasetPath.parse(container / "volumes/masks/cell"))
    update_dataset_meta(DatasetPath.parse(container / "volumes/predictions/run1/mito/segmentation"), complete=False)
    third = predict_cell(tmp_path)
    assert third.returncode == 0, third.stderr
    statuses = {stage: status for stage, (status, _) in summary(third.stdout).items()}
    # and the stages reading what they wrote
    ran = [stage for stage, status in statuses.items() if status == "ran"]
    assert ran == ["mask", "predict_mito", "objects_mito", "report", "view"]
    assert "[4/11] predict_mito: resuming (incomplete)" in third.stdout
    assert "0 blocks processed, 1 skipped (already done)" in third.stdout
    after = files(container)
    unchanged = [name for name in before if name.startswith(("volumes/raw/", "volumes/raw_clahe/"))]
    assert unchanged and all(after[name] == before[name] for name in unchanged)
    assert np.array_equal(read_dataset(container / "volumes/masks/cell"), mask)
    assert is_complete(DatasetPath.parse(container / "volumes/predictions/run1/mito/segmentation"))

    # --serve: after the table, the view stage's container is served until Ctrl-C
    process = subprocess.Popen(
        [sys.executable, "-m", "incasem_like", "run", PIPELINES / "predict_cell.yaml", "--set",
         f"tiffs={SAMPLE_DIR / 'raw'}", "--set", f"roi={CROP}", "--set", "workers=1", "--serve"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )  # fmt: skip
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True)
    reader.start()
    try:
        printed = []
        while (line := lines.get(timeout=300)) != "serving until Ctrl-C":
            printed.append(line)
        assert summary("\n".join(printed))["predict_mito"][0] == "skipped"  # the table came first
        report = dict(line.partition(": ")[::2] for line in printed)
        data_url = report["data"].removesuffix(" (read-only)")
        assert report["neuroglancer"].startswith("http://127.0.0.1:")
        status, metadata = fetch(f"{data_url}/volumes/predictions/run1/mito/segmentation/zarr.json")
        assert status == 200 and json.loads(metadata)["attributes"]["incasem_like"]["complete"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join()


# --- small pipelines on synthetic data: failures, changes, --force --------------------------------------------------
SMALL = {
    "name": "small",
    "variables": {"tiffs": {"required": True}, "kernel": 8, "block": 16},
    "stages": [
        {
            "command": "convert",
            "source": "${tiffs}",
            "output": "c.zarr/volumes/raw",
            "voxel_size": [5, 5, 5],
            "chunk": 16,
        },
        {
            "command": "clahe",
            "input": "${convert.output}",
            "output": "c.zarr/volumes/raw_clahe",
            "kernel": "${kernel}",
            "chunk": 16,
            "block": "${block}",
        },
        {"command": "export", "dataset": "${clahe.output}", "out_dir": "slices"},
    ],
}


def run_in_process(capsys, *args) -> tuple[int, str, str]:
    code = main(["run", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small(tmp_path, monkeypatch, rng) -> Path:
    """The small pipeline file and a 16 x 32 x 32 TIFF stack, in the working directory."""
    monkeypatch.chdir(tmp_path)
    write_slices(tmp_path / "tiffs", rng.integers(0, 256, (16, 32, 32), dtype=np.uint8))
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL, sort_keys=False))
    return path


def test_a_failing_stage_stops_the_run_and_a_rerun_resumes_from_it(small, capsys):
    code, out, err = run_in_process(capsys, small, "--set", "tiffs=tiffs", "--set", "block=20")
    assert code == 2
    assert {stage: status for stage, (status, _) in summary(out).items()} == {
        "convert": "ran",
        "clahe": "failed",
        "export": "not run",
    }
    assert err.count("\n") == 1 and err.startswith(
        "incasem-like: error: stage 2 (clahe) failed: block 20 must be a positive multiple of chunk 16"
    )
    assert "rerunning the pipeline resumes from there" in err
    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs")
    assert code == 0
    assert [status for status, _ in summary(out).values()] == ["skipped", "ran", "ran"]
    assert len(list(Path("slices").glob("*.tif"))) == 16


def test_changed_options_rerun_the_stage_and_the_stages_reading_its_output(small, capsys):
    assert run_in_process(capsys, small, "--set", "tiffs=tiffs")[0] == 0
    first = read_dataset("c.zarr/volumes/raw_clahe")
    raw_files = files(Path("c.zarr/volumes/raw"))

    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs", "--set", "kernel=16")
    assert code == 0
    assert "[2/3] clahe: running again (options changed: kernel 8 -> 16): clahe input=c.zarr/volumes/raw " in out
    assert "[3/3] export: running again (clahe rewrites its input " in out
    assert [status for status, _ in summary(out).values()] == ["skipped", "ran", "ran"]
    assert not np.array_equal(read_dataset("c.zarr/volumes/raw_clahe"), first)
    assert files(Path("c.zarr/volumes/raw")) == raw_files

    code, out, _ = run_in_process(
        capsys, small, "--set", "tiffs=tiffs", "--set", "kernel=16", "--force", "convert", "--dry-run"
    )
    assert code == 0
    assert [status for status, _ in summary(out).values()] == ["would run"] * 3
    assert "[1/3] convert: running again (--force): convert source=tiffs output=c.zarr/volumes/raw " in out
    assert files(Path("c.zarr/volumes/raw")) == raw_files  # a dry run runs nothing


def test_outputs_record_their_step_so_any_working_directory_sees_a_change(small, tmp_path, monkeypatch, capsys):
    anywhere = yaml.safe_dump(SMALL, sort_keys=False).replace("c.zarr", "${pipeline_dir}/c.zarr")
    small.write_text(anywhere.replace("out_dir: slices", "out_dir: ${pipeline_dir}/slices"))
    tiffs = f"tiffs={tmp_path / 'tiffs'}"
    assert run_in_process(capsys, small, "--set", tiffs)[0] == 0
    first = read_dataset(tmp_path / "c.zarr/volumes/raw_clahe")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # none of the first run's working directory comes along
    code, out, _ = run_in_process(capsys, small, "--set", tiffs, "--set", "kernel=16")
    assert code == 0
    assert "[2/3] clahe: running again (options changed: kernel 8 -> 16)" in out
    assert [status for status, _ in summary(out).values()] == ["skipped", "ran", "ran"]
    assert not np.array_equal(read_dataset(tmp_path / "c.zarr/volumes/raw_clahe"), first)
    assert [
        status for status, _ in summary(run_in_process(capsys, small, "--set", tiffs, "--set", "kernel=16")[1]).values()
    ] == ["skipped"] * 3

    update_dataset_meta(DatasetPath.parse(tmp_path / "c.zarr/volumes/raw_clahe"), incasem_step=None)
    (tmp_path / ".slices.incasem_step.json").unlink()
    code, out, _ = run_in_process(capsys, small, "--set", tiffs, "--set", "kernel=16")
    assert code == 0
    assert f"[2/3] clahe: running again ({tmp_path}/c.zarr/volumes/raw_clahe records no step that wrote it)" in out
    assert [status for status, _ in summary(out).values()] == ["skipped", "ran", "ran"]


def test_a_stage_its_command_already_ran_by_hand_is_up_to_date(small, capsys):
    """The command line and the pipeline file make the same step, so an output of either is the other's."""
    assert (
        main(["convert", "tiffs", "c.zarr/volumes/raw", "--voxel-size", "5", "5", "5", "--chunk", "16", "--quiet"]) == 0
    )
    capsys.readouterr()
    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs")
    assert code == 0
    assert [status for status, _ in summary(out).values()] == ["skipped", "ran", "ran"]
    clahe = ["clahe", "c.zarr/volumes/raw", "c.zarr/volumes/raw_clahe", "--kernel", "16", "--block", "16"]
    assert main([*clahe, "--chunk", "16", "--overwrite", "--quiet"]) == 0  # by hand, with another kernel
    capsys.readouterr()
    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs")
    assert "[2/3] clahe: running again (options changed: kernel 16 -> 8)" in out


def test_the_demo_is_a_pipeline_of_steps(tmp_path):
    pipeline = demo_pipeline(tmp_path)
    assert [stage.command for stage in pipeline.stages] == [
        "convert",
        "convert",
        "clahe",
        "labels metric-mask",
        "predict",
        "evaluate",
    ]
    assert [item.action for item in plan(pipeline)] == ["run"] * 6  # its inputs exist or come from earlier stages


def test_an_output_another_tool_wrote_is_never_replaced(small, tmp_path, capsys):
    """The pipeline would rerun the stage (its output records no step) and so replace the output: refused before
    any stage runs, the dataset left as it was."""
    group = zarr.open_group(tmp_path / "c.zarr/volumes/raw_clahe", mode="w")
    group.create_array("s0", shape=(4, 4, 4), dtype=np.uint8)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = run_in_process(capsys, small, "--set", "tiffs=tiffs")
    assert code == 2 and err.count("\n") == 1 and out == "", err
    assert "stage 2 (clahe): c.zarr/volumes/raw_clahe exists and is not a dataset incasem-like wrote" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_stages_not_requested_and_the_stages_using_their_output(small, capsys):
    optional = {**SMALL["stages"][1], "when_set": ["enhance"]}
    content = {**SMALL, "variables": {**SMALL["variables"], "enhance": None}, "stages": [SMALL["stages"][0], optional]}
    small.write_text(yaml.safe_dump({**content, "stages": [*content["stages"], SMALL["stages"][2]]}, sort_keys=False))

    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs", "--dry-run")
    assert code == 0
    assert summary(out) == {
        "convert": ("would run", "c.zarr/volumes/raw"),
        "clahe": ("not requested", "--set enhance=... to run it"),
        "export": ("not requested", "uses the output of clahe, which is not requested"),
    }
    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs", "--set", "enhance=yes", "--dry-run")
    assert [status for status, _ in summary(out).values()] == ["would run"] * 3


def test_a_view_stage_with_a_base_url_ends_the_run_with_its_link(small, capsys):
    view = {"command": "view", "container": "c.zarr", "base_url": "${url}", "state_file": "state.json"}
    content = {**SMALL, "variables": {**SMALL["variables"], "url": None}, "stages": [SMALL["stages"][0], view]}
    small.write_text(yaml.safe_dump(content, sort_keys=False))

    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs", "--set", "url=https://data.example.org/c.zarr")
    assert code == 0
    link = out.splitlines()[-1]
    assert link.startswith("neuroglancer: https://neuroglancer-demo.appspot.com/#!") and "data.example.org" in link
    state = json.loads(Path("state.json").read_text())
    assert state["layers"][0]["source"] == "zarr://https://data.example.org/c.zarr/volumes/raw"
    # without the URL the option is left out: the container would be served locally (--serve), so not here
    code, out, _ = run_in_process(capsys, small, "--set", "tiffs=tiffs")
    assert code == 0
    assert "[2/2] view: running (it shows the data): view container=c.zarr state_file=state.json" in out
    assert out.splitlines()[-1].startswith("neuroglancer: not served; rerun with --serve")


# --- bad pipelines: one line, exit 2, nothing written ---------------------------------------------------------------
def stage_with(**fields) -> dict:
    return {**SMALL, "stages": [SMALL["stages"][0], {"command": "clahe", **fields}]}


TIFFS = ["--set", "tiffs=tiffs"]
BAD = {
    "unknown command": (
        {**SMALL, "stages": [SMALL["stages"][0], {"command": "clahee"}]},
        TIFFS,
        "stage 2 (clahee): command 'clahee' is not a stage (did you mean clahe?); stages run: convert, rescale, clahe,",
    ),
    "not a stage": ({**SMALL, "stages": [{"command": "demo"}]}, TIFFS, "command 'demo' is not a stage; stages run:"),
    "labels without operation": (
        {**SMALL, "stages": [{"command": "labels"}]},
        TIFFS,
        "command 'labels' is not a stage (did you mean labels clean?)",
    ),
    "unknown field": (
        stage_with(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", kernal=64),
        TIFFS,
        "stage 2 (clahe): kernal: unknown key; did you mean 'kernel'?",
    ),
    "wrong type": (
        stage_with(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", workers="many"),
        TIFFS,
        "stage 2 (clahe): workers = 'many': Input should be a valid integer",
    ),
    "list for one value": (
        stage_with(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", kernel=[1, 2]),
        TIFFS,
        "stage 2 (clahe): kernel = [1, 2]: Input should be a valid integer",
    ),
    "missing field": (stage_with(input="c.zarr/volumes/raw"), TIFFS, "stage 2 (clahe): output is missing; add it"),
    "options of the old format": (
        {**SMALL, "stages": [{"command": "clahe", "options": {"input": "x"}}]},
        TIFFS,
        "stage 1 (clahe): options: stages no longer nest their options; write the step's fields beside command",
    ),
    "organelle or parameters": (
        {**SMALL, "stages": [{"command": "labels dilate", "input": "c.zarr/volumes/l", "output": "c.zarr/volumes/d"}]},
        TIFFS,
        "stage 1 (labels_dilate): labels dilate: give organelle NAME (known: ccp, er, golgi, mito, nuclear_pore) or "
        "voxels",
    ),
    "bad cluster setting": (
        stage_with(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", cluster="slurm", memory="lots"),
        TIFFS,
        "stage 2 (clahe): memory lots: give a size such as 16G",
    ),
    "unknown variable": (
        stage_with(input="${container}/volumes/raw", output="c.zarr/volumes/x"),
        TIFFS,
        "stage 2 (clahe): input: ${container} is not a variable of this pipeline; variables: ${tiffs}, "
        "${kernel}, ${block}, ${pipeline_dir}",
    ),
    "missing variable": (SMALL, [], "variable tiffs is required: pass --set tiffs=VALUE"),
    "unknown --set key": (SMALL, ["--set", "tiff=x"], "--set tiff: no such variable; variables: tiffs, kernel, block"),
    "--set without =": (SMALL, ["--set", "tiffs"], "--set tiffs: write KEY=VALUE"),
    "missing input": (
        SMALL,
        ["--set", "tiffs=nowhere"],
        "stage 1 (convert): its input nowhere does not exist and no earlier stage writes it",
    ),
    "unknown --force stage": (SMALL, [*TIFFS, "--force", "clahee"], "--force clahee: no such stage"),
    "--serve without view": (SMALL, [*TIFFS, "--serve"], "--serve: pipeline.yaml has no view stage"),
    "duplicate stage name": (
        {**SMALL, "stages": [SMALL["stages"][0], SMALL["stages"][0]]},
        TIFFS,
        "stage 2 (convert): an earlier stage has this name; give each stage its own name",
    ),
    "no stages": ({"name": "x", "stages": []}, TIFFS, "stages = []: List should have at least 1 item"),
    "two stages writing one output": (
        {**SMALL, "stages": [SMALL["stages"][0], {**SMALL["stages"][1], "output": "c.zarr/volumes/raw"}]},
        TIFFS,
        "stage 2 (clahe) and stage 1 (convert) both write c.zarr/volumes/raw; give each stage its own output",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_pipeline_is_one_line_naming_the_problem_and_writes_nothing(case, tmp_path, monkeypatch, capsys, rng):
    content, arguments, message = BAD[case]
    monkeypatch.chdir(tmp_path)
    write_slices(tmp_path / "tiffs", rng.integers(0, 256, (4, 8, 8), dtype=np.uint8))
    Path("pipeline.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    before = sorted(map(str, tmp_path.rglob("*")))

    assert main(["run", "pipeline.yaml", *arguments]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and message in err, err
    assert out == "" and sorted(map(str, tmp_path.rglob("*"))) == before


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "missing.yaml: no such pipeline file; see pipelines/ for examples"),
        ("name: x\nstages: [\n", "missing.yaml: not valid YAML at line 3"),
        ("- a list\n", "missing.yaml: expected a mapping of keys (name, description, variables, stages)"),
    ],
)
def test_a_missing_or_broken_file_is_one_line(text, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        Path("missing.yaml").write_text(text)
    assert main(["run", "missing.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- the shipped pipelines -----------------------------------------------------------------------------------------
def shipped(name: str, **variables) -> list:
    """The planned steps of a shipped pipeline on the embedded sample (nothing runs)."""
    assignments = [f"{key}={value}" for key, value in variables.items()]
    return plan(load_pipeline(PIPELINES / f"{name}.yaml", assignments))


def test_the_shipped_pipelines_check_out_on_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw, mito = SAMPLE_DIR / "raw", SAMPLE_DIR / "mito"

    with pytest.raises(UserError, match=r"stage 5 \(predict_er\): its input er.pt does not exist"):
        shipped("predict_cell", tiffs=raw, er_checkpoint="er.pt")
    steps = shipped("predict_cell", tiffs=raw, er_checkpoint=bundled_model("mito"))
    assert [(s.stage.name, s.stage.command, s.action) for s in steps] == [
        ("convert", "convert", "run"),
        ("clahe", "clahe", "run"),
        ("mask", "mask", "run"),
        ("predict_mito", "predict", "run"),
        ("predict_er", "predict", "run"),
        *((f"predict_{o}", "predict", "not requested") for o in ORGANELLES[2:]),
        ("objects_mito", "objects", "run"),
        ("report", "report", "run"),
        ("view", "view", "run"),
    ]
    assert steps[3].stage.step.checkpoint == "bundled:mito"

    steps = shipped("prepare_training", raw_tiffs=raw, labels_tiffs=mito, organelle="er")
    assert [(s.stage.command, s.stage.step.shown()) for s in steps] == [
        ("convert", "cell.zarr/volumes/raw"),
        ("convert", "cell.zarr/volumes/labels/er_annotation"),
        ("clahe", "cell.zarr/volumes/raw_clahe"),
        ("mask", "cell.zarr/volumes/masks/cell"),
        ("labels clean", "cell.zarr/volumes/labels/er_clean"),
        ("labels dilate", "cell.zarr/volumes/labels/er"),
        ("labels metric-mask", "cell.zarr/volumes/metric_masks/er"),
    ]
    assert steps[-1].stage.step.organelle == "er" and steps[-1].stage.step.dilation_voxels == 1  # er's default

    steps = shipped("finetune_cell", raw_tiffs=raw, labels_tiffs=mito)
    assert [s.stage.command for s in steps] == [
        "convert",
        "convert",
        "clahe",
        "labels metric-mask",
        "finetune",
        "predict",
        "evaluate",
        "view",
    ]
    finetune, predict, evaluate = (s.stage for s in steps[4:7])
    assert finetune.step.config == str(REPO / "configs/training/finetune_cell_mito.yaml")
    assert predict.step.checkpoint == "runs/finetune_cell_mito"  # the run folder: its best checkpoint
    assert (evaluate.step.roi_offset, evaluate.step.roi_shape) == ((30, 0, 0), (10, 384, 384))
    # the finetune stage reads what the stages before it write, so it is checked against them
    assert {"naive_cell.zarr/volumes/raw_clahe", "naive_cell.zarr/volumes/metric_masks/mito"} <= set(
        finetune.step.reads()
    )


def test_the_sparse_finetuning_pipeline_checks_out_on_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steps = shipped("finetune_sparse_cell", raw_tiffs=SAMPLE_DIR / "raw", labels_tiffs=SAMPLE_DIR / "mito")
    assert [s.stage.command for s in steps] == [
        "convert",
        "convert",
        "clahe",
        "labels interpolate",
        "labels metric-mask",
        "finetune",
        "predict",
        "evaluate",
        "view",
    ]
    interpolate, finetune = steps[3].stage.step, steps[5].stage.step
    assert interpolate.annotated == (0, 10, 20, 29) and interpolate.raw == "naive_cell.zarr/volumes/raw_clahe"
    # the fine-tuning reads the interpolated labels and their sure mask, so it follows the interpolation
    assert {
        "naive_cell.zarr/volumes/labels/mito_interpolated",
        "naive_cell.zarr/volumes/labels/mito_interpolated_sure",
    } <= set(finetune.reads())


# --- slow: the training pipelines on the whole sample --------------------------------------------------------------
@pytest.mark.slow
def test_prepare_training_and_finetune_cell_run_on_the_sample(tmp_path):
    raw, mito = SAMPLE_DIR / "raw", SAMPLE_DIR / "mito"
    prepared = run_cli(
        "run",
        PIPELINES / "prepare_training.yaml",
        "--set",
        f"raw_tiffs={raw}",
        "--set",
        f"labels_tiffs={mito}",
        "--quiet",
        cwd=tmp_path,
        timeout=900,
    )
    assert prepared.returncode == 0, prepared.stderr
    assert {status for status, _ in summary(prepared.stdout).values()} == {"ran"}
    for name in ("raw_clahe", "masks/cell", "labels/mito", "labels/mito_clean", "metric_masks/mito"):
        assert is_complete(DatasetPath.parse(tmp_path / "cell.zarr/volumes" / name))

    config = yaml.safe_load((REPO / "configs/training/finetune_cell_mito.yaml").read_text())
    config.update(iterations=2, validate_every=2, checkpoint_every=2, snapshot_every=2, data_workers=0, device="cpu")
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    arguments = ["--set", f"raw_tiffs={raw}", "--set", f"labels_tiffs={mito}", "--set", "training_config=finetune.yaml"]
    finetuned = run_cli("run", PIPELINES / "finetune_cell.yaml", *arguments, "--quiet", cwd=tmp_path, timeout=1200)
    assert finetuned.returncode == 0, finetuned.stderr
    assert {status for status, _ in summary(finetuned.stdout).values()} == {"ran"}
    assert "validation F1 before" in finetuned.stdout
    best = json.loads((tmp_path / "runs/finetune_cell_mito/summary.json").read_text())["best"]["checkpoint"]
    evaluation = json.loads((tmp_path / "evaluation_finetuned_mito.json").read_text())
    assert 0 < evaluation["best"]["f1"] <= 1
    assert Path(best).name in finetuned.stdout  # predict names the checkpoint the run folder stands for


@pytest.mark.slow
def test_finetune_sparse_cell_runs_on_the_sample(tmp_path):
    config = yaml.safe_load((REPO / "configs/training/finetune_sparse_cell_mito.yaml").read_text())
    config.update(iterations=2, validate_every=2, checkpoint_every=2, snapshot_every=2, data_workers=0, device="cpu")
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    arguments = ["--set", f"raw_tiffs={SAMPLE_DIR / 'raw'}", "--set", f"labels_tiffs={SAMPLE_DIR / 'mito'}",
                 "--set", "training_config=finetune.yaml"]  # fmt: skip
    finetuned = run_cli(
        "run", PIPELINES / "finetune_sparse_cell.yaml", *arguments, "--quiet", cwd=tmp_path, timeout=1200
    )
    assert finetuned.returncode == 0, finetuned.stderr
    assert {status for status, _ in summary(finetuned.stdout).values()} == {"ran"}
    sure = read_dataset(tmp_path / "naive_cell.zarr/volumes/labels/mito_interpolated_sure")
    assert sure[:30].mean() > 0.9 and not sure[30:].any()  # nothing is extrapolated beyond slice 29
    evaluation = json.loads((tmp_path / "evaluation_finetuned_sparse_mito.json").read_text())
    assert 0 < evaluation["best"]["f1"] <= 1
