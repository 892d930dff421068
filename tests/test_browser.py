"""The lessons in a real browser: JupyterLab on 127.0.0.1, opened in headless Chromium (Debian's package,
driven by Playwright), every cell run with JupyterLab's own "Run All Cells". Lessons run as an instructor
presents them: a lesson with a `parameters` cell gets ``PRESENTER = True`` injected after it, as papermill
does. A lesson passes when every cell ran without an error output (its assertions included), every widget
rendered (none shows "Error displaying widget") and every plot it drew shows as an image.
Run with ``-s`` to see how long each lesson took.

`bash course.sh test` installs Debian's chromium when it runs as root; elsewhere install it yourself
(`sudo apt-get install chromium`). Without it these tests are skipped, except under CI, where they fail.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
# Every lesson: 00 and 01 as they are, the others in presenter mode, each about a minute (lesson 09's once a full
# run of it has saved its results; before that its presenter mode trains, as long as the full lesson).
BROWSER_LESSONS = sorted(p.name for p in LESSONS_DIR.glob("*.ipynb"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "Debian's chromium is not installed (sudo apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """A JupyterLab server on 127.0.0.1, no token, serving a scratch folder the notebooks are copied into."""
    root = tmp_path_factory.mktemp("lab")
    port = _free_port()
    log = (root / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip",
            "127.0.0.1",
            f"--port={port}",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.root_dir={root}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start; see {root / 'jupyterlab.log'}")
            time.sleep(0.5)
    yield url, root
    server.terminate()
    server.wait(timeout=30)
    log.close()


NOTEBOOK = "window.jupyterapp.shell.currentWidget"
STATE = f"""() => {{
    const cells = {NOTEBOOK}.content.widgets.filter(c => c.model.type === 'code');
    const outputs = cells.map(c => c.model.outputs.toJSON());
    return {{
        counts: cells.map(c => c.model.executionCount),
        busy: document.querySelectorAll('.jp-CodeCell .jp-InputPrompt').length === 0 ||
              Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')).some(e => e.textContent.includes('*')),
        errors: outputs.flat().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
        widgetOutputs: outputs.flat().filter(o => o.data && o.data['{WIDGET_VIEW}']).length,
        widgetsRendered: document.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').length,
        widgetErrors: Array.from(document.querySelectorAll('.jp-OutputArea-output'))
            .filter(e => e.textContent.includes('Error displaying widget')).length,
        imageOutputs: outputs.flat().filter(o => o.data && o.data['image/png']).length,
        images: document.querySelectorAll('.jp-OutputArea-output img').length,
    }};
}}"""


def run_in_lab(page, url: str, name: str, timeout: float = 1800) -> dict:
    """Open ``name`` in JupyterLab, clear it, run all cells and wait until they finish or one fails.

    The deadline allows for a lesson that waits while another test process builds the cached models it needs.
    """
    start = time.monotonic()
    page.goto(f"{url}/lab/tree/{name}?reset")  # ?reset: a fresh workspace, not the last test's open tabs
    page.wait_for_function(
        f"() => window.jupyterapp && {NOTEBOOK} && {NOTEBOOK}.sessionContext.session"
        f" && {NOTEBOOK}.sessionContext.session.kernel"
        f" && {NOTEBOOK}.sessionContext.session.kernel.status === 'idle'",
        timeout=120_000,
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    # not awaited: the command's promise can outlive a failing cell, and this loop polls with a deadline
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    while True:
        time.sleep(1)
        state = page.evaluate(STATE)
        done = all(c is not None for c in state["counts"]) or state["errors"]
        if done and not state["busy"]:
            break
        if time.monotonic() - start > timeout:
            state["errors"].append(f"timed out after {timeout:.0f} s")
            break
    settle = time.monotonic() + 20  # widget views render (or give up on a missing model) after the kernel is idle
    while True:
        page.wait_for_timeout(500)
        state, errors = page.evaluate(STATE), state["errors"]
        state["errors"] = errors  # a timeout noted above stays noted
        if state["widgetsRendered"] + state["widgetErrors"] >= state["widgetOutputs"] or time.monotonic() > settle:
            break
    state["seconds"] = time.monotonic() - start
    page.evaluate(f"() => {NOTEBOOK}.sessionContext.shutdown()")  # a lesson's kernel holds its models in memory
    return state


def presenter_copy(source: Path, dest: Path) -> bool:
    """Copy a lesson, with ``PRESENTER = True`` injected after its `parameters` cell; False if it has none."""
    nb = json.loads(source.read_text())
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) <= 1, f"{source.name}: more than one cell tagged parameters"
    if tagged:
        nb["cells"].insert(
            tagged[0] + 1,
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "injected-parameters",
                "metadata": {"tags": ["injected-parameters"]},
                "outputs": [],
                "source": ["# Injected by the browser test\n", "PRESENTER = True"],
            },
        )
    dest.write_text(json.dumps(nb))
    return bool(tagged)


def _committed_images(path: Path) -> int:
    cells = json.loads(path.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c["outputs"])


@pytest.mark.parametrize("name", BROWSER_LESSONS)
def test_lesson_runs_in_jupyterlab(lab, browser, name):
    url, root = lab
    presenter = presenter_copy(LESSONS_DIR / name, root / name)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        state = run_in_lab(page, url, name)
    finally:
        page.screenshot(path=str(root / f"{name}.png"))
        page.close()
    print(f"{name}: {state['seconds']:.0f} s in the browser{' (presenter mode)' if presenter else ''}")
    assert not state["errors"], f"{name}: {state['errors']}"
    assert all(c is not None for c in state["counts"]), f"{name}: not every cell ran"
    assert state["widgetErrors"] == 0, f"{name}: a widget shows 'Error displaying widget'"
    assert state["widgetsRendered"] >= state["widgetOutputs"], f"{name}: a widget output did not render"
    assert state["images"] >= state["imageOutputs"], f"{name}: a plot did not render"
    if _committed_images(LESSONS_DIR / name):  # presenter mode may draw fewer plots, never none
        assert state["imageOutputs"] > 0, f"{name}: no plots"


def test_a_raising_cell_and_a_broken_widget_are_caught(lab, browser):
    """The harness itself: a cell that raises and a widget whose model does not exist must both be reported."""
    import nbformat

    url, root = lab
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=3)"),
        nbformat.v4.new_code_cell(
            f"from IPython.display import display\ndisplay({{'{WIDGET_VIEW}': "
            "{'model_id': 'no-such-model', 'version_major': 2, 'version_minor': 0}}, raw=True)"
        ),
        nbformat.v4.new_code_cell("raise ValueError('a lesson cell that fails')"),
        nbformat.v4.new_code_cell("print('never reached')"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "broken.ipynb")
    page = browser.new_page()
    try:
        state = run_in_lab(page, url, "broken.ipynb", timeout=120)
    finally:
        page.close()
    assert state["errors"] == ["ValueError: a lesson cell that fails"]
    assert state["counts"][3] is None  # Run All stops at the failing cell
    assert state["widgetErrors"] == 1 and state["widgetOutputs"] == 2 and state["widgetsRendered"] == 1
