"""Committed lessons read well on a hosting page and diff cleanly: executed, no errors, no timestamps."""

import argparse
import json
import re
from pathlib import Path

import nbformat
import pytest

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_committed_executed_without_volatile_metadata(path):
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), "re-execute the lesson (see README)"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    assert not any("execution" in c.get("metadata", {}) for c in code), "use --ExecutePreprocessor.record_timing=False"
    # widget state carries random model ids and, for an image widget, a whole PNG: it would churn every diff
    assert "widgets" not in json.loads(path.read_text())["metadata"], (
        "use --ExecutePreprocessor.store_widget_state=False"
    )


DRAWS = re.compile(r"plt\.|\.plot\(|plots\.|subplots|imshow|\.bar\(|\.scatter\(")


def blind_figures(notebook: dict) -> list[int]:
    """Indices of the code cells that draw a figure but hold no image: a reader of the page would see nothing."""
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    return [
        i
        for i, c in enumerate(code)
        if DRAWS.search("".join(c["source"])) and not any("image/png" in o.get("data", {}) for o in c["outputs"])
    ]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_figure_a_lesson_draws_is_in_the_committed_page(path):
    assert blind_figures(json.loads(path.read_text())) == [], "re-execute the lesson (see README)"


def test_a_figure_lost_from_the_page_is_caught():
    drawn = {
        "cell_type": "code",
        "source": ["fig, ax = plt.subplots()\n"],
        "outputs": [{"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}],
    }
    lost = {**drawn, "outputs": [{"output_type": "execute_result", "data": {"text/plain": "<Figure size 640x480>"}}]}
    assert blind_figures({"cells": [drawn, lost, {**drawn, "source": ["print(1)\n"], "outputs": []}]}) == [1]


def test_lesson_00_lists_every_exercise_of_the_package():
    from rlhf_course.exercises import CATALOG

    cells = json.loads((LESSONS[0].parent / "00_setup_and_tour.ipynb").read_text())["cells"]
    listing = next(c for c in cells if c["cell_type"] == "code" and "exercises.CATALOG" in "".join(c["source"]))
    printed = "".join("".join(o.get("text", "")) for o in listing["outputs"])
    missing = [name for name in CATALOG if not re.search(rf"\b{name}\b", printed)]
    assert not missing, f"lesson 00's committed catalog lacks {missing}: re-execute it"


MATH_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", re.S)
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?!\w|\.\d)")
DURATION = re.compile(r"\b\d+(?:[.,]\d+)?(?:–\d+(?:\.\d+)?)?\s?(?:s|sec|seconds?|min|minutes?|h|hours?)\b")


def typed_figures(notebook: dict) -> list[str]:
    """Figures typed into a lesson's prose that its code does not own.

    The rule, for whoever writes a lesson: a decimal number in a Markdown cell (outside math and code
    spans) must appear in the lesson's code too, as an asserted bound or a constant the code uses; a
    measured value is printed by the cell that measures it. Durations never appear in prose: the measured
    lesson times live in the generated table of lessons/README.md.
    """
    code = " ".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    found = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        prose = MATH_OR_CODE.sub(" ", "".join(cell["source"]))
        found += [m.group(0) for m in DECIMAL.finditer(prose) if m.group(0) not in code]
        found += [m.group(0) for m in DURATION.finditer(prose)]
    return found


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_prose_states_no_figure_that_the_code_does_not_own(path):
    assert typed_figures(json.loads(path.read_text())) == [], (
        "print measured values from code and quote only the bounds the cells assert (see typed_figures)"
    )


def test_a_typed_figure_is_caught_and_a_bound_is_not():
    def notebook(prose):
        return {
            "cells": [
                {"cell_type": "code", "source": ["assert gold > 0.65\n"]},
                {"cell_type": "markdown", "source": [prose]},
            ]
        }

    assert typed_figures(notebook("Gold rises above 0.65, $\\beta = 0.1$, `lr=3.5`.")) == []
    assert typed_figures(notebook("Gold rises to 0.709.")) == ["0.709"]
    assert typed_figures(notebook("It takes about 3 minutes (90 s on a GPU).")) == ["3 minutes", "90 s"]


def _measure_tool():
    import importlib.util

    path = LESSONS[0].parent.parent / "tools" / "measure_lessons.py"
    spec = importlib.util.spec_from_file_location("measure_lessons", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_time_and_seed_tables_are_the_ones_the_measurements_give():
    tool = _measure_tool()
    records = tool.load_records()
    for path, name, text in (
        (tool.ROOT / "README.md", "lesson times", tool.time_table(records)),
        (tool.LESSONS / "README.md", "lesson times", tool.time_table(records)),
        (tool.LESSONS / "README.md", "seed claims", tool.seed_table(records)),
    ):
        begin = f"<!-- {name}: begin (written by tools/measure_lessons.py) -->\n"
        written = path.read_text().split(begin, 1)[1].split(f"\n<!-- {name}: end -->", 1)[0]
        assert written == text, f"{path.name}'s {name} table is stale: run `python tools/measure_lessons.py tables`"
    assert set(records) >= {0, 1, 2}, "measure the lessons on seeds 0, 1 and 2"
    for seed, record in records.items():  # every lesson ran on every seed, and every claim held
        assert {p.stem for p in LESSONS} == set(record["lessons"]), seed
        failed = [
            (name, c["source"])
            for name, lesson in record["lessons"].items()
            for c in lesson["claims"]
            if c["holds"] is not True
        ]
        assert not failed, f"seed {seed}: {failed}"
    presenter = records[0].get("presenter_lessons", {})  # the live-demo version, as the browser test runs it
    assert not [
        (name, c["source"]) for name, lesson in presenter.items() for c in lesson["claims"] if c["holds"] is not True
    ]


def test_the_measuring_run_records_each_assertion_and_still_checks_it(tmp_path, monkeypatch):
    tool = _measure_tool()
    claims = tmp_path / "claims.jsonl"
    monkeypatch.setenv("MEASURE_LESSONS_CLAIMS", str(claims))
    source = "gold = 0.7\nempty = []\nassert gold > 0.5 and max(empty) > 0, 'no'\n"
    namespace = {}
    exec(tool.RECORDER, namespace)
    with pytest.raises(ValueError):  # max() of nothing: the assertion fails as it would have
        exec(tool.instrumented(source, "99.cell0"), namespace)
    recorded = json.loads(claims.read_text())
    assert recorded["source"] == "gold > 0.5 and max(empty) > 0" and recorded["holds"] == "(ValueError)"
    assert recorded["operands"] == [["gold", 0.7], ["max(empty)", "(ValueError)"]]
    with pytest.raises(AssertionError):
        exec(tool.instrumented("assert gold < 0.5", "99.cell1"), namespace)
    assert json.loads(claims.read_text().splitlines()[1])["holds"] is False


def test_a_section_recorded_apart_replaces_only_its_cells_claims(tmp_path, monkeypatch):
    tool = _measure_tool()
    lessons, measurements = tmp_path / "lessons", tmp_path / "lessons" / "measurements"
    measurements.mkdir(parents=True)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("SEED = 0"),
            nbformat.v4.new_code_cell("assert SEED >= 0"),
            nbformat.v4.new_code_cell("x = SEED + 1\nassert x > 1, 'seed 0 fails here'"),
        ]
    )
    notebook.cells[2]["id"] = "toy"
    nbformat.write(notebook, lessons / "99_toy.ipynb")
    old = {"claim": "99.cell2.1", "source": "old", "holds": False, "operands": []}
    kept = {"claim": "99.cell1.1", "source": "SEED >= 0", "holds": True, "operands": []}
    record = {"seed": 1, "lessons": {"99_toy": {"seconds": 1.0, "claims": [kept, old]}}}
    (measurements / "seed1.json").write_text(json.dumps(record))
    monkeypatch.setattr(tool, "LESSONS", lessons)
    monkeypatch.setattr(tool, "MEASUREMENTS", measurements)
    tool.cmd_section(argparse.Namespace(seed=1, lesson="99", cell_id="toy"))
    entry = json.loads((measurements / "seed1.json").read_text())["lessons"]["99_toy"]
    assert entry["claims"][0] == kept and entry["seconds"] == 1.0
    assert [(c["claim"], c["source"], c["holds"]) for c in entry["claims"][1:]] == [("99.cell2.1", "x > 1", True)]
    assert set(entry["sections_run_apart"]) == {"toy"}
