"""The package's layers: a module imports only from its own layer and the ones before it (rlhf_course/__init__.py)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rlhf_course"
LAYERS = ["core", "simulation", "algorithms", "analysis", "teaching", "scale", "checks", "top"]


def _layer(module: str) -> str:
    """The layer of ``rlhf_course.x.y`` or of a file's dotted name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top"


def test_every_import_points_down_the_layers_or_within_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(("rlhf_course", *path.relative_to(PACKAGE).with_suffix("").parts))
        own = LAYERS.index(_layer(dotted))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlhf_course"):
                targets = (
                    [node.module] if node.module != "rlhf_course" else [f"rlhf_course.{a.name}" for a in node.names]
                )
                for target in targets:
                    if LAYERS.index(_layer(target)) > own:
                        wrong.append(f"{dotted} imports {target}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_every_module_lives_in_a_layer_and_the_top_holds_only_what_runs_the_course():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "checkpoints", "cli", "config_flags", "exercises", "model_cards", "pipeline", "report"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        [layer for layer in LAYERS if layer != "top"] + ["artifacts"]
    )
