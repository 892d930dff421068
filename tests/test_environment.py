"""environment.yml (for conda users) must describe the same environment as pyproject.toml."""

from pathlib import Path

import tomllib

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


def test_constraints_pin_every_dependency_to_a_version_the_ranges_allow():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt lacks {name}: run `bash course.sh constraints`"
        assert requirement.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, outside {text}"


def test_a_deprecated_library_call_is_blamed_on_the_course_only_when_the_course_made_it():
    import conftest

    library = {}
    exec(
        compile(
            "import sys\ndef deprecated():\n    return sys._getframe()\n",
            "/venv/lib/site-packages/somelib/api.py",
            "exec",
        ),
        library,
    )
    callers = {}
    for name, filename in (
        ("course", conftest.PACKAGE + "/somewhere.py"),
        ("other library", "/venv/lib/site-packages/otherlib/api.py"),
    ):
        scope = {"deprecated": library["deprecated"]}
        exec(compile("def call():\n    return deprecated()\n", filename, "exec"), scope)
        callers[name] = conftest._course_call_that_is_deprecated(scope["call"]())
    assert callers == {"course": "somewhere.py:2", "other library": None}
