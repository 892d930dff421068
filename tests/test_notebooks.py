"""Committed lessons read well on a hosting page and diff cleanly: executed, no errors, no timestamps."""
import json
import re
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


DRAWS = re.compile(r"plt\.|\.plot\(|plots\.|subplots|imshow|\.bar\(|\.scatter\(")


def blind_figures(notebook: dict) -> list[int]:
    """Indices of the code cells that draw a figure but hold no image: a reader of the page would see nothing."""
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    return [i for i, c in enumerate(code) if DRAWS.search("".join(c["source"]))
            and not any("image/png" in o.get("data", {}) for o in c["outputs"])]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_figure_a_lesson_draws_is_in_the_committed_page(path):
    assert blind_figures(json.loads(path.read_text())) == [], "re-execute the lesson (see README)"


def test_a_figure_lost_from_the_page_is_caught():
    drawn = {"cell_type": "code", "source": ["fig, ax = plt.subplots()\n"], "outputs": [
        {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}]}
    lost = {**drawn, "outputs": [{"output_type": "execute_result", "data": {"text/plain": "<Figure size 640x480>"}}]}
    assert blind_figures({"cells": [drawn, lost, {**drawn, "source": ["print(1)\n"], "outputs": []}]}) == [1]


def test_lesson_00_lists_every_exercise_of_the_package():
    from rlhf_course.exercises import CATALOG

    cells = json.loads((LESSONS[0].parent / "00_setup_and_tour.ipynb").read_text())["cells"]
    listing = next(c for c in cells if c["cell_type"] == "code" and "exercises.CATALOG" in "".join(c["source"]))
    printed = "".join("".join(o.get("text", "")) for o in listing["outputs"])
    missing = [name for name in CATALOG if not re.search(rf"\b{name}\b", printed)]
    assert not missing, f"lesson 00's committed catalog lacks {missing}: re-execute it"
