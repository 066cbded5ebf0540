"""The field-device promise: tiercel.tasks and tiercel.runtime import without torch or transformers."""

import subprocess
import sys


def test_tasks_and_runtime_import_without_torch():
    code = (
        "import sys, tiercel.tasks, tiercel.runtime, tiercel.models.tokenizer, tiercel.models.presets, tiercel.data.images,"
        " tiercel.progress, tiercel.runtime.profile.runner;"
        "print(' '.join(m for m in ('torch', 'transformers', 'onnx', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from tiercel.cli import app;"
        "print(' '.join(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_runtime_and_tasks_depend_on_tasks_only():
    """DESIGN.md's direction, lazy imports included: the runtime reaches tasks and the shared helpers, never a stage
    (models, evaluate, export, quantize, ...), which would pull torch onto a field device the moment it is called."""
    import ast
    from pathlib import Path

    import tiercel

    root = Path(tiercel.__file__).parent
    allowed = {"tiercel.tasks", "tiercel.runtime", "tiercel.errors", "tiercel.fileio", "tiercel._lazy", "tiercel.progress",
               # torch-free leaf modules the runtime shares with training (the first test imports them bare)
               "tiercel.models.tokenizer", "tiercel.data.images"}
    found = []
    for package in ("runtime", "tasks"):
        for file in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:  # from tiercel import tasks
                    names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tiercel" else [node.module]
                else:
                    names = []
                found += [f"{file.relative_to(root)}: {n}" for n in names
                          if n.startswith("tiercel") and not any(n == a or n.startswith(a + ".") for a in allowed)]
    assert found == []
