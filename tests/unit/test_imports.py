"""The field-device promise: tiercel.tasks and tiercel.runtime import without torch or transformers."""

import subprocess
import sys


def test_tasks_and_runtime_import_without_torch():
    code = (
        "import sys, tiercel.tasks, tiercel.runtime, tiercel.runtime.tokenizer, tiercel.models.presets, tiercel.data.images,"
        " tiercel.progress, tiercel.runtime.profile.runner;"
        "print(' '.join(m for m in ('torch', 'transformers', 'onnx', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_scoring_needs_shapely_and_pycocotools_only_under_the_falcon_protocol():
    # tiercel's protocol scores every task with numpy; Falcon's loads shapely (quads) and pycocotools (polygons)
    code = (
        "import sys; import tiercel.tasks as T;"
        "q = T.get('REG_DET_OBB'); p = T.get('PIX_SEG');"
        "quads = [q.parse('<quad><1><1><9><1><9><9><1><9></quad>', image_size=(100, 100))];"
        "polys = [p.parse('<poly><1><1><9><1><9><9></poly>', image_size=(100, 100))];"
        "q.metric(quads, quads); p.metric(polys, polys, [(100, 100)]);"
        "before = [m for m in ('shapely', 'pycocotools', 'torch') if m in sys.modules];"
        "q.metric(quads, quads, protocol='falcon'); p.metric(polys, polys, [(100, 100)], protocol='falcon');"
        "after = [m for m in ('shapely', 'pycocotools', 'torch') if m in sys.modules];"
        "print(' '.join(before) + '|' + ' '.join(after))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "|shapely pycocotools"


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
               "tiercel.runtime.tokenizer", "tiercel.data.images"}
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


def _import_graph() -> dict[str, set[str]]:
    """{module: tiercel modules it imports}, deferred imports (inside functions) included. `from pkg import mod`
    counts as an import of pkg.mod; a package's own __init__ running first is not counted as an edge."""
    import ast
    from pathlib import Path

    import tiercel

    root = Path(tiercel.__file__).parent
    files = {}
    for file in root.rglob("*.py"):
        parts = ("tiercel", *file.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file

    def module_of(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, file in files.items():
        package = mod if file.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            deps |= {module_of(n) for n in names if n.startswith("tiercel")} - {mod, ""}
        graph[mod] = deps
    return graph


def test_no_import_cycles():
    """A cycle hidden by a deferred import still ties two modules together; every one is refused, with its path."""
    graph = _import_graph()
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            mod, path = stack.pop()
            for dep in graph[mod]:
                if dep == start:
                    cycles.append(" -> ".join([*path, start]))
                elif dep not in seen and dep > start:  # each cycle once: from its smallest module
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert cycles == []


def test_the_cycle_check_sees_a_deferred_import():
    graph = _import_graph()
    assert "tiercel.distill.data" in graph["tiercel.distill.cache"]  # a deferred import inside a function
    assert "tiercel.runtime.tokenizer" in graph["tiercel.models.checkpoint"]
