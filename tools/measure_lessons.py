"""Run the lessons, record what each assertion measured and how long each lesson took, and write the tables.

    python tools/measure_lessons.py run --seed 0 --inplace   # execute and commit the lessons (seed 0)
    python tools/measure_lessons.py run --seed 1             # the same lessons on another seed, outputs discarded
    python tools/measure_lessons.py tables                   # rewrite the tables in README.md and lessons/README.md

Each run executes every lesson with its ``SEED`` parameter set (a cell injected after the `parameters` cell,
as papermill does) and with each ``assert`` rewritten to record its outcome and operands before it is checked
(so an assertion's expression is evaluated twice, once for the record; the lessons' assertions are pure), so the
three-seed table shows the values behind every claim, passed or failed (a failed assertion stops its cell,
as it would for a student, and the run goes on with the next cell). Measurements go to
``lessons/measurements/seed<N>.json``; ``tables`` reads them all. Run it the way CI runs the lessons: one
torch thread (``OMP_NUM_THREADS=1``), the lesson cache already built (times are for a warm cache; the
cache's own build times come from the pipeline's ``metrics.json``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import fcntl
import json
import os
import platform
import re
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
MEASUREMENTS = LESSONS / "measurements"

RECORDER = '''\
def _record_claim_(claim, source, test, operands):
    """Written by tools/measure_lessons.py: note an assertion's outcome and operands, then let it be checked."""
    import json as _json, os as _os
    try:
        holds = bool(test())
    except Exception as error:
        holds = f"({type(error).__name__})"
    values = []
    for text, thunk in operands:
        try:
            value = thunk()
            if not isinstance(value, bool):
                value = float(f"{float(value):.4g}") if isinstance(value, (int, float)) or hasattr(value, "item") else repr(value)
        except Exception as error:  # an operand the assertion's own short-circuit would not have evaluated
            value = f"({type(error).__name__})"
        values.append([text, value])
    with open(_os.environ["MEASURE_LESSONS_CLAIMS"], "a") as f:
        f.write(_json.dumps({"claim": claim, "source": source, "holds": holds, "operands": values}) + "\\n")
'''


def _operands(node: ast.expr) -> list[ast.expr]:
    """The sub-expressions worth showing beside an assertion: the sides of its comparisons."""
    if isinstance(node, ast.BoolOp):
        return [o for value in node.values for o in _operands(value)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _operands(node.operand)
    if isinstance(node, ast.Compare):
        return [side for side in [node.left, *node.comparators] if not isinstance(side, ast.Constant)]
    return [node]


class _Instrument(ast.NodeTransformer):
    """Put ``_record_claim_(...)`` before every top-level ``assert`` of a cell (and inside its ifs and loops)."""

    def __init__(self, prefix: str, source: str):
        self.prefix, self.source, self.count = prefix, source, 0

    def visit_FunctionDef(self, node):  # an assertion inside a helper is checked where the helper is called
        return node

    def visit_Assert(self, node: ast.Assert):
        self.count += 1
        no_arguments = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])

        def text(expr):  # as the lesson wrote it
            return ast.get_source_segment(self.source, expr) or ast.unparse(expr)

        thunks = ast.List(
            [ast.Tuple([ast.Constant(text(o)), ast.Lambda(no_arguments, o)], ast.Load()) for o in _operands(node.test)],
            ast.Load(),
        )
        call = ast.Expr(
            ast.Call(
                ast.Name("_record_claim_", ast.Load()),
                [
                    ast.Constant(f"{self.prefix}.{self.count}"),
                    ast.Constant(text(node.test)),
                    ast.Lambda(no_arguments, node.test),
                    thunks,
                ],
                [],
            )
        )
        return [call, node]


def instrumented(source: str, prefix: str) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython syntax: run as it is, its assertions (if any) unrecorded
        return source
    transformer = _Instrument(prefix, source)
    tree = ast.fix_missing_locations(transformer.visit(tree))
    return ast.unparse(tree) if transformer.count else source


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return f"{cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def run_lesson(path: Path, seed: int, inplace: bool, claims_file: Path, presenter: bool = False) -> dict:
    original = nbformat.read(path, as_version=4)
    nb = copy.deepcopy(original)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for number, i in enumerate(code):
        nb.cells[i].source = instrumented(nb.cells[i].source, f"{path.stem[:2]}.cell{number}")
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = [nbformat.v4.new_code_cell(RECORDER)]
    if tagged:
        settings = f"SEED = {seed}" + ("\nPRESENTER = True" if presenter else "")
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(settings))
        injected.append(nb.cells[tagged[0] + 1])
    # a lesson without a parameters cell has nothing to seed (lesson 00): it runs as it is on every seed
    nb.cells.insert(0, injected[0])
    os.environ["MEASURE_LESSONS_CLAIMS"] = str(claims_file)
    load = os.getloadavg()[0]  # what else was running: the times depend on it
    start = time.time()
    client = NotebookClient(
        nb,
        timeout=3600,
        kernel_name="python3",
        allow_errors=not inplace,
        resources={"metadata": {"path": str(LESSONS)}},
        record_timing=True,  # per-cell times, for the record only: the committed page keeps no timing metadata
    )
    client.execute()
    seconds = time.time() - start
    errors = [
        o.get("ename", "") + ": " + o.get("evalue", "")[:200]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    cell_seconds = {}
    for cell in nb.cells:
        timing = cell.metadata.get("execution", {})
        if cell.cell_type == "code" and {"iopub.execute_input", "shell.execute_reply"} <= timing.keys():
            begun, ended = (
                datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                for k in ("iopub.execute_input", "shell.execute_reply")
            )
            cell_seconds[cell.id] = round((ended - begun).total_seconds(), 1)
    if inplace:  # the committed page: the lesson's own cells, with the outputs this run gave them
        executed = [c for c in nb.cells if not any(c is cell for cell in injected)]
        for count, (mine, ran) in enumerate(
            zip([c for c in original.cells if c.cell_type == "code"], [c for c in executed if c.cell_type == "code"]),
            start=1,
        ):
            for output in ran.outputs:  # "Out[n]" matches "In[n]" once the injected cells are gone
                if output.output_type == "execute_result":
                    output.execution_count = count
            mine.outputs, mine.execution_count = ran.outputs, count
        original.metadata.pop("widgets", None)
        nbformat.write(original, path)
    slowest = dict(sorted(cell_seconds.items(), key=lambda kv: -kv[1])[:6])  # where the lesson's time goes
    return {"seconds": round(seconds, 1), "errors": errors, "load_before": round(load, 2), "slowest_cells": slowest}


@contextlib.contextmanager
def _locked(path: Path):
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cmd_run(args) -> None:
    warnings.filterwarnings("ignore", message="Cell is missing an id field")  # the lessons are nbformat 4.4
    MEASUREMENTS.mkdir(exist_ok=True)
    out = MEASUREMENTS / f"{'presenter-' if args.presenter else ''}seed{args.seed}.json"
    record = (
        json.loads(out.read_text()) if out.exists() else {"seed": args.seed, "presenter": args.presenter, "lessons": {}}
    )
    paths = [p for p in sorted(LESSONS.glob("*.ipynb")) if not args.lessons or p.name[:2] in args.lessons]
    _warm_cache(args.seed, paths)
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            claims_file = Path(tmp) / "claims.jsonl"
            claims_file.touch()
            result = run_lesson(path, args.seed, args.inplace, claims_file, args.presenter)
            claims = [json.loads(line) for line in claims_file.read_text().splitlines()]
        with _locked(out):  # another run may have written other lessons of this seed meanwhile: merge
            record = json.loads(out.read_text()) if out.exists() else record
            record["lessons"][path.stem] = {
                **result,
                "claims": claims,
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
            record["lessons"] = dict(sorted(record["lessons"].items()))
            # a cache built only as far as the lessons run need (02 needs none, 07 stops at PPO): each stage
            # keeps the minutes of its last measured build
            record["cache_minutes"] = {**record.get("cache_minutes", {}), **_cache_build_minutes(args.seed)}
            out.write_text(json.dumps(record, indent=1) + "\n")
        print(
            f"{path.name}: {result['seconds']:.0f} s, {len(claims)} claims, errors: {result['errors'] or 'none'}",
            flush=True,
        )


def _warm_cache(seed: int, paths: list[Path]) -> None:
    """Build the stages of the lesson cache for ``seed`` that the lessons at ``paths`` ask for
    (``checkpoints.prepared([...])``), before any lesson is timed: the tables promise times with the cache
    warm, and no committed output should show a build."""
    from rlhf_course import checkpoints, pipeline

    asked = set()
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            for listed in re.findall(r"prepared\(\s*\[([^\]]*)\]", cell.source):
                asked.update(re.findall(r"[\"'](\w+)[\"']", listed))
    unknown = asked - set(pipeline.STAGES)
    if unknown:
        raise ValueError(f"lessons ask the cache for unknown stages {sorted(unknown)}; known: {list(pipeline.STAGES)}")
    if asked:
        checkpoints.prepared([s for s in pipeline.STAGES if s in asked], pipeline.PipelineConfig(seed=seed))


def _cache_build_minutes(seed: int) -> dict[str, float]:
    """Minutes each pipeline stage took when the lesson cache for ``seed`` was built (its metrics.json)."""
    from rlhf_course import checkpoints, pipeline

    path = checkpoints.cache_root() / f"pipeline-{checkpoints.fingerprint(pipeline.PipelineConfig(seed=seed))}"
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    return {stage: metrics[stage]["seconds"] / 60 for stage in pipeline.STAGES if stage in metrics}


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    text = str(v)
    return text if len(text) <= 24 else text[:20] + " ..."  # a list the assertion looked into, say


def _where(machine: str, usual: str) -> str:
    """A machine as the tables name it: its processor, and whatever else differs from the usual machine's
    description (the core count, the thread count), e.g. "AMD EPYC, OMP_NUM_THREADS=2"."""
    first, *rest = machine.split(", ")
    return ", ".join([first] + [part for part in rest if part not in usual.split(", ")])


def _elsewhere(run: dict, seed0: dict) -> str:
    """Where a seed's run of a lesson was measured, when not where its seed-0 run was."""
    same = run.get("machine") == seed0.get("machine")
    return "" if same else f" (on {_where(run['machine'], seed0.get('machine', ''))})"


def time_table(records: dict[int, dict]) -> str:
    zero = records[0]["lessons"]
    stages = records[0].get("cache_minutes", {})
    loads = sorted(lesson["load_before"] for lesson in zero.values() if "load_before" in lesson) or [float("nan")]
    dates, kinds = [lesson["date"] for lesson in zero.values()], [lesson["machine"] for lesson in zero.values()]
    usual_date, usual_machine = max(set(dates), key=dates.count), max(set(kinds), key=kinds.count)
    lines = [
        f"Measured by `python tools/measure_lessons.py run --seed 0 --inplace` on {usual_machine}, "
        f"the lesson cache warm, {usual_date} (a lesson measured on another machine says which; the same lesson "
        "can take a different time there); the machine's load average "
        f"as each lesson started was {loads[0]:.1f} to {loads[-1]:.1f} (other jobs ran beside it). "
        "Building the cache once (the first lesson that needs a model does it) took, per pipeline stage: "
        + ", ".join(f"{stage} {minutes:.1f} min" for stage, minutes in stages.items())
        + ".",
        "",
        "| lesson | whole lesson, warm cache | seeds 1 and 2 (on seed 0's machine unless named) | presenter mode, seed 0 |",
        "|---|---|---|---|",
    ]
    presenter = records[0].get("presenter_lessons", {})
    for name, lesson in zero.items():
        others = [
            f"{records[s]['lessons'][name]['seconds'] / 60:.1f} min" + _elsewhere(records[s]["lessons"][name], lesson)
            for s in (1, 2)
            if s in records and name in records[s]["lessons"]
        ]
        short = f"{presenter[name]['seconds'] / 60:.1f} min" if name in presenter else "the same lesson"
        day = (
            f" (on {_where(lesson['machine'], usual_machine)}, {lesson['date']})"
            if lesson["machine"] != usual_machine
            else ""
        )
        lines.append(
            f"| {name.replace('_', ' ', 1)} | {lesson['seconds'] / 60:.1f} min{day} | {', '.join(others) or 'not run'} "
            f"| {short} |"
        )
    return "\n".join(lines)


def seed_table(records: dict[int, dict]) -> str:
    seeds = sorted(records)
    lines = [
        "| lesson | claim (the assertion) | values, seed " + " / ".join(map(str, seeds)) + " | holds on |",
        "|---|---|---|---|",
    ]
    for name in records[0]["lessons"]:
        claims = {}
        for seed in seeds:
            for claim in records[seed]["lessons"].get(name, {}).get("claims", []):
                claims.setdefault((claim["claim"], claim["source"]), {})[seed] = claim
        for (_, source), by_seed in claims.items():
            values = []
            for seed in seeds:
                claim = by_seed.get(seed)
                values.append(
                    "not reached" if claim is None else ", ".join(_value(v) for _, v in claim["operands"]) or "-"
                )
            held = [str(seed) for seed in seeds if by_seed.get(seed, {}).get("holds") is True]
            verdict = "all" if len(held) == len(seeds) else (", ".join(held) or "none")
            source = " ".join(source.split()).replace("|", "\\|")  # one line, whatever the lesson's layout
            lines.append(f"| {name[:2]} | `{source}` | {' / '.join(values)} | {verdict} |")
    return "\n".join(lines)


def _replace_between(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- {name}: begin (written by tools/measure_lessons.py) -->", f"<!-- {name}: end -->"
    content = path.read_text()
    if begin not in content:
        raise SystemExit(f"{path}: no {begin} marker")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def load_records() -> dict[int, dict]:
    records = {}
    for path in sorted(MEASUREMENTS.glob("seed*.json")):
        record = json.loads(path.read_text())
        records[record["seed"]] = record
    presenter = MEASUREMENTS / "presenter-seed0.json"
    if presenter.exists() and 0 in records:
        records[0]["presenter_lessons"] = json.loads(presenter.read_text())["lessons"]
    if 0 not in records:
        raise SystemExit(f"no {MEASUREMENTS / 'seed0.json'}: run `python tools/measure_lessons.py run --seed 0` first")
    return records


def cmd_tables(args) -> None:
    records = load_records()
    _replace_between(LESSONS / "README.md", "lesson times", time_table(records))
    _replace_between(ROOT / "README.md", "lesson times", time_table(records))
    _replace_between(LESSONS / "README.md", "seed claims", seed_table(records))


def cmd_section(args) -> None:
    """Record one self-contained cell's claims on a seed without running the rest of its lesson.

    For a section that needs only the lesson's parameters, numpy and matplotlib (lesson 06's loss-averaging
    toy), on a seed whose cached full runs are not built: the cell runs after the parameters cell, instrumented
    under its number in the whole lesson, and its claims replace that cell's in the seed's record. The lesson's
    own ``seconds`` stay those of its last whole run; the section's are kept beside them.
    """
    path = next(LESSONS.glob(f"{args.lesson}_*.ipynb"))
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    number = next((i for i, c in enumerate(code) if c.get("id") == args.cell_id), None)
    if number is None:
        raise SystemExit(f"{path.name} has no code cell with id {args.cell_id!r}")
    prefix = f"{path.stem[:2]}.cell{number}"
    cells = [
        RECORDER,
        code[0].source,
        f"SEED = {args.seed}",
        "import matplotlib.pyplot as plt\nimport numpy as np",
        instrumented(code[number].source, prefix),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        claims_file = Path(tmp) / "claims.jsonl"
        claims_file.touch()
        os.environ["MEASURE_LESSONS_CLAIMS"] = str(claims_file)
        start = time.time()
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}
        ).execute()
        seconds = time.time() - start
        claims = [json.loads(line) for line in claims_file.read_text().splitlines()]
    out = MEASUREMENTS / f"seed{args.seed}.json"
    with _locked(out):
        record = json.loads(out.read_text())
        entry = record["lessons"][path.stem]
        entry["claims"] = [c for c in entry["claims"] if not c["claim"].startswith(prefix + ".")] + claims
        apart = entry.get("sections_run_apart", {})
        apart = {} if "cell" in apart else apart  # the first records held a single cell
        apart[args.cell_id] = {"seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d"), "machine": machine()}
        entry["sections_run_apart"] = apart
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"{path.name}, cell {args.cell_id}: {seconds:.0f} s, {len(claims)} claims, all hold: {all(c['holds'] is True for c in claims)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the lessons on one seed and record their claims and times")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--lessons", nargs="*", help="two-digit lesson numbers (default: all)")
    run.add_argument("--inplace", action="store_true", help="write the outputs into the lessons (stop at an error)")
    run.add_argument("--presenter", action="store_true", help="with PRESENTER = True (the live-demo version)")
    run.set_defaults(func=cmd_run)
    section = sub.add_parser("section", help="record one self-contained cell's claims on a seed (see cmd_section)")
    section.add_argument("--seed", type=int, required=True)
    section.add_argument("--lesson", required=True, help="two-digit lesson number")
    section.add_argument("--cell-id", required=True, help="the code cell's id in the notebook")
    section.set_defaults(func=cmd_section)
    sub.add_parser("tables", help="rewrite the tables from lessons/measurements").set_defaults(func=cmd_tables)
    args = parser.parse_args()
    if args.command == "run" and args.inplace and (args.seed != 0 or args.presenter):
        parser.error("the committed lessons are the full version on seed 0: --inplace needs --seed 0, no --presenter")
    args.func(args)


if __name__ == "__main__":
    main()
