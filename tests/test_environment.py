"""environment.yml (for conda users) must describe the same environment as pyproject.toml."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_lines_of_environment_yml() -> set[str]:
    lines, in_pip = set(), False
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        text = raw.split("#")[0].rstrip()
        if text.strip() == "- pip:":
            in_pip = True
        elif in_pip and text.strip().startswith("- "):
            lines.add(text.strip()[2:].strip())
    return lines


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"]) | {"-e ."}
    assert pip_lines_of_environment_yml() == wanted
