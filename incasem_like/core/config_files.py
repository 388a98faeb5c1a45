"""Reading the YAML files users write (training configs, organelle defaults, cluster settings)."""

from pathlib import Path

import yaml

from incasem_like.core.errors import UserError


def read_yaml_mapping(path: Path, expected: str) -> dict:
    """The mapping a YAML file holds; `UserError` naming the file (and line) if it is not valid YAML or holds no
    mapping (`expected` describes the mapping: "keys (organelle, run_dir, ...)")."""
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of {expected}")
    return content
