"""tiercel.runtime: load a bundle and run the 14 Falcon tasks with numpy and one backend.

    import tiercel.runtime
    m = tiercel.runtime.load("bundle/", backend="onnxruntime")          # or "openvino"
    g = tiercel.runtime.load("bundle/", device="cuda")                  # GPU: KV cache stays on the device
    boxes = m.run("scene.png", task="REG_DET_HBB", text="airplane")      # Boxes in pixels
    results = m.run_all("scene.png", ["IMG_CAP", "IMG_CLS"])             # one vision pass

The runtime knows nothing about torch or transformers; a field device installs `tiercel[onnx]` or
`tiercel[openvino]` and nothing heavy. It reads only the bundle and verifies every checksum on load.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.runtime.backends import BACKENDS, BackendSpec, get_backend
from tiercel.runtime.bundle import Bundle, read_bundle
from tiercel.runtime.generate import GenerationConfig
from tiercel.runtime.model import Model

__all__ = ["BACKENDS", "BackendSpec", "Bundle", "GenerationConfig", "Model", "load", "read_bundle"]


def load(bundle: str | Path, backend: str = "onnxruntime", device: str | None = None, threads: int | None = None,
         options: dict | None = None, io_binding: bool | None = None) -> Model:
    """Open a bundle on a backend after checking every file it will read against the manifest's sha256.

    Args:
        bundle: the bundle directory (it holds manifest.json).
        backend: a key of BACKENDS that opens bundles (runtime.backends.bundle_backends()).
        device: backend device ("cpu"/"cuda"/"tensorrt" for onnxruntime, "CPU"/"GPU"/"NPU" for openvino).
        threads: intra-op threads (None: the backend's default).
        options: backend settings passed through as they are: onnxruntime session config entries
            ({"session.intra_op.allow_spinning": "0"} stops idle worker threads from spinning, which helps on a
            device that runs other work), or OpenVINO compile properties ({"PERFORMANCE_HINT": "LATENCY"}).
        io_binding: keep the KV cache on the device between decode steps (onnxruntime I/O binding, TensorRT
            device buffers). None: on for GPU devices (onnxruntime "cuda"/"tensorrt", backend "tensorrt"), off
            on a CPU, where copies cost nothing and the plain path is the faster one. OpenVINO has no such path.
    """
    from tiercel.errors import ConfigError
    from tiercel.runtime.backends import check_device
    from tiercel.runtime.tokenizer import TextTokenizer

    spec = get_backend(backend, "bundle", str(bundle))
    device = check_device(spec, device)
    b = read_bundle(bundle)
    entries = b.entries(backend)
    b.verify(entries.values())
    if spec.check is not None:
        spec.check(b, entries)
    if io_binding is None:
        io_binding = spec.bound and device.lower() not in ("cpu",)
    elif io_binding and not spec.bound:
        raise ConfigError(f"io_binding: backend '{backend}' has no device-resident path; use onnxruntime or tensorrt")
    sessions = {name: spec.open(b.root / e.file, device, threads, options) for name, e in entries.items()}
    tokenizer = TextTokenizer.from_dir(b.root / b.manifest.tokenizer.file)
    return Model(b, sessions, tokenizer, backend, device, io_binding=io_binding)
