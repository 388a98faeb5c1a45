"""Reading the YAML files users write (training configs, organelle defaults, cluster settings, pipelines), bounded:
a file of at most `MAX_BYTES`, expanding (aliases counted each time they are used) to at most `MAX_VALUES` values,
so neither a huge file nor an alias bomb can exhaust memory or flood an error message."""

from pathlib import Path
from typing import Any

import yaml

from incasem_like.core.errors import UserError

MAX_BYTES = 1 << 20
MAX_VALUES = 100_000


def read_yaml_mapping(path: Path, expected: str) -> dict:
    """The mapping a YAML file holds; `UserError` naming the file (and line) if it is not valid YAML, too large, or
    holds no mapping (`expected` describes the mapping: "keys (organelle, run_dir, ...)")."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UserError(f"{path}: {size} bytes, more than a config file holds ({MAX_BYTES}); check the file")
    content = load_yaml(path.read_text(), str(path))
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of {expected}")
    return content


def load_yaml(text: str, source: str) -> Any:
    """YAML `text` (from `source`, named in errors) as Python values, bounded as the module says."""
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source}: not valid YAML{where}: {problem}") from None
    if _count_values(content, MAX_VALUES + 1) > MAX_VALUES:
        raise UserError(
            f"{source}: expands to more than {MAX_VALUES} values (YAML aliases used over and over?); write the "
            "values out"
        )
    return content


def _count_values(content: Any, limit: int) -> int:
    """Values in `content`, every use of a shared (aliased) one counted, stopping at `limit`."""
    count, todo = 0, [content]
    while todo and count < limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return count
