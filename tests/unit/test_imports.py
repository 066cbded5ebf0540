"""The field-device promise: tiercel.tasks and tiercel.runtime import without torch or transformers."""

import subprocess
import sys


def test_tasks_and_runtime_import_without_torch():
    code = (
        "import sys, tiercel.tasks, tiercel.runtime, tiercel.models.tokenizer, tiercel.models.presets;"
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
