"""tiercel.runtime: load a bundle and run the 14 Falcon tasks with numpy and one backend.

The runtime knows nothing about torch or transformers; a field device installs `tiercel[onnx]` or
`tiercel[openvino]` and nothing heavy. (Bundle loading and generation arrive with the export issue.)
"""
