"""Committed lessons read well on a hosting page and diff cleanly: executed, no errors, no timestamps."""
import json
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_committed_executed_without_volatile_metadata(path):
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), "re-execute the lesson (see README)"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    assert not any("execution" in c.get("metadata", {}) for c in code), "use --ExecutePreprocessor.record_timing=False"
    # widget state carries random model ids and, for an image widget, a whole PNG: it would churn every diff
    assert "widgets" not in json.loads(path.read_text())["metadata"], "use --ExecutePreprocessor.store_widget_state=False"
