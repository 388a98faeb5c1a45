"""The pipeline documentation names every step and every field a pipeline file's stage can have."""

import re

from incasem_like.workflow.steps import STEP_TYPES
from tests.conftest import REPO


def test_the_field_table_lists_every_step_and_field():
    rows = {}
    for line in (REPO / "docs/usage/pipelines.md").read_text().splitlines():
        if match := re.match(r"\| `([a-z -]+)` \| (.*) \|$", line):
            rows[match[1]] = set(re.findall(r"`([a-z_]+)`\*?", match[2]))
    assert set(rows) == set(STEP_TYPES)
    for command, step in STEP_TYPES.items():
        fields = {field.alias or name for name, field in step.model_fields.items() if name != "command"}
        assert fields <= rows[command], f"{command}: {sorted(fields - rows[command])} not documented"
