"""A bundle's ONNX graphs -> TensorRT engines built on the GPU that will run them (Jetson Orin, desktop cards).

    tiercel engines BUNDLE [--max-batch N]       # on the device: engines next to the graphs, manifest updated

Engines are strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED): every tensor keeps the
type the ONNX graph gives it, so precision comes from the graph and no builder precision flag is set (TensorRT
11 removed FP16/INT8/OBEY_PRECISION_CONSTRAINTS; strongly typed networks refuse them in 10.x). An fp16 bundle
(`export --precision fp16`) gives fp16 engines with norms and softmax in fp32 through the graph's own casts; the
Q/DQ graphs of `quantize --backend tensorrt` give INT8 engines (TensorRT takes the scales from the Q/DQ nodes);
an fp32 bundle gives fp32 engines. One code path for TensorRT 10.3 (JetPack 6) up to 11.x; the runtime module
checks the version (tiercel.runtime.tensorrt.TENSORRT_RANGE).

Two optimisation profiles per engine, sized from what the runtime sends (`profiles`): one tuned for a single
row, one for a batch (run_all's 14 prompts); both take up to `max_batch` rows (default: the 14 tasks x the
bundle's num_beams) and sequences up to the model's positions. The runtime picks one per call and splits a larger
batch into chunks. Every engine is checked against its ONNX graph on onnxruntime before it is kept
(`engine_parity`: max difference per output on real and random feeds, and greedy tokens on the parity prompts),
and the manifest records it with the TensorRT version, GPU and compute capability (engines are not portable).

The planning (profiles, precision, feeds, the manifest rows) is plain Python; building needs tensorrt and a GPU.
CPU tests run all of it through tests/fake_tensorrt.py, whose API surface is checked against TensorRT 10.3 and
11 name lists. Written, never run on a real TensorRT (none could be installed where tiercel is developed).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path

import numpy as np

from tiercel.errors import BundleError, require
from tiercel.export.graphs import DECODER_FIRST, DECODER_MERGED, DECODER_PAST, EMBED, ENCODER, VISION, kv_names
from tiercel.fileio import make_temp, temp_name
from tiercel.progress import track

TASKS = 14  # run_all's prompts: every Falcon task on one image
VISION_BATCH = 4  # images per vision call: run_all sends 2 (the scene and PIX_CHG's tiled pair)
PROMPT_OPT = 32  # prompt tokens the profiles are tuned for
PARITY_NEW_TOKENS = 12
TOLERANCE = 1e-2  # max diff relative to max(1, |reference|), as export's fp16 parity (tiercel.export.parity)


def check_available():
    """The tensorrt module: MissingDependency without it, BundleError outside 10.3..11.x or without a CUDA GPU."""
    from tiercel.runtime.tensorrt import import_tensorrt

    trt = import_tensorrt("building TensorRT engines")
    _builder(trt, trt.Logger(trt.Logger.ERROR))
    return trt


def _builder(trt, logger):
    """trt.Builder(logger); BundleError in one line when CUDA cannot start."""
    try:
        builder = trt.Builder(logger)
    except Exception as err:  # TypeError/RuntimeError when CUDA cannot initialise
        raise BundleError(f"TensorRT cannot start ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                          "building engines needs an NVIDIA GPU with a working CUDA driver") from err
    if builder is None:
        raise BundleError("TensorRT cannot start; building engines needs an NVIDIA GPU with a working CUDA driver")
    return builder


def default_max_batch(num_beams: int | None) -> int:
    """Rows the text graphs' profiles take by default: run_all's 14 prompts, each with num_beams beams."""
    return TASKS * max(1, num_beams or 1)


def profiles(name: str, shape, max_batch: int = TASKS, vision_batch: int = VISION_BATCH) -> list[dict]:
    """[single-row profile, batched profile] of graph `name`: {input: (min, opt, max)} shapes each.

    `shape` is the model's ModelShape. Both profiles take 1..max_batch rows (vision: 1..vision_batch images)
    and sequences up to the model's text positions (the encoder's image tokens + prompt, the decoder's past);
    the first is tuned for one row, the second for min(max_batch, 14) rows (vision: 2 images). The decoders'
    per-item inputs (encoder states, mask, cross-attention KV) take 1..max_batch items as well: greedy decoding
    sends as many items as rows, beam search fewer (rows / beams), so the rows' range covers both.
    """
    heads, d = shape.attention_heads, shape.d_model
    hd, layers = d // heads, shape.decoder_layers
    positions = shape.max_text_positions
    enc_min, enc_max = min(shape.image_tokens + 1, positions), positions
    enc_opt = min(shape.image_tokens + PROMPT_OPT, enc_max)
    out = []
    for opt_b in (1, min(max_batch, TASKS)):
        def triple(*levels):
            return tuple(tuple(level) for level in levels)

        bsd = lambda s: triple((1, s[0], d), (opt_b, s[1], d), (max_batch, s[2], d))  # noqa: E731
        mask = triple((1, enc_min), (opt_b, enc_opt), (max_batch, enc_max))
        enc_states, one_step = bsd((enc_min, enc_opt, enc_max)), bsd((1, 1, 1))
        if name == VISION:
            s, opt_v = shape.image_size, 1 if opt_b == 1 else min(2, vision_batch)
            prof = {"pixel_values": triple((1, 3, s, s), (opt_v, 3, s, s), (vision_batch, 3, s, s))}
        elif name == EMBED:  # the prompts (up to the positions) and each decode step's tokens (1)
            prof = {"input_ids": triple((1, 1), (opt_b, 1 if opt_b == 1 else PROMPT_OPT), (max_batch, positions))}
        elif name == ENCODER:
            prof = {"inputs_embeds": enc_states, "attention_mask": mask}
        elif name == DECODER_FIRST:
            prof = {"inputs_embeds": one_step, "encoder_attention_mask": mask, "encoder_hidden_states": enc_states}
        elif name in (DECODER_PAST, DECODER_MERGED):
            prof = {"inputs_embeds": one_step, "encoder_attention_mask": mask}
            past_min = 0 if name == DECODER_MERGED else 1
            for n in kv_names("past_key_values", layers):
                if ".encoder." in n:
                    prof[n] = triple((1, heads, enc_min if past_min else 0, hd), (opt_b, heads, enc_opt, hd),
                                     (max_batch, heads, enc_max, hd))
                else:
                    prof[n] = triple((1, heads, past_min, hd), (opt_b, heads, PROMPT_OPT, hd), (max_batch, heads, positions, hd))
            if name == DECODER_MERGED:
                prof["encoder_hidden_states"] = enc_states
        else:
            raise BundleError(f"no TensorRT profile is defined for graph '{name}'")
        out.append(prof)
    return out


def has_qdq(graph) -> bool:
    """Whether an ONNX graph (ModelProto or file) holds QuantizeLinear nodes, If branches included."""
    if not hasattr(graph, "graph"):
        graph = require("onnx", "onnx", "reading ONNX graphs").load(str(graph), load_external_data=False)
    todo = [graph.graph]
    while todo:
        g = todo.pop()
        for node in g.node:
            if node.op_type == "QuantizeLinear":
                return True
            todo += [a.g for a in node.attribute if a.HasField("g")] + [sub for a in node.attribute for sub in a.graphs]
    return False


def engine_precision(graph_precision: str, qdq: bool) -> str:
    """The precision a manifest records for an engine: int8 for a Q/DQ graph, else the graph's own (fp16/fp32)."""
    return "int8" if qdq else "fp16" if graph_precision == "fp16" else "fp32"


def network_flags(trt) -> int:
    """create_network's flags: a strongly typed network (explicit batch is the only mode since TensorRT 10)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(onnx_file: Path, engine_file: Path, shapes: list[dict], workspace_gb: float | None = None) -> Path:
    """Parse `onnx_file` into a strongly typed network, add the profiles `shapes`, serialise the engine.

    workspace_gb: cap TensorRT's scratch memory (None: TensorRT's default, the device's memory).
    """
    from tiercel.runtime.tensorrt import import_tensorrt

    trt = import_tensorrt("building TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _builder(trt, logger)  # the one Builder of this engine (check_available's probe is not repeated)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise BundleError(f"{onnx_file}: TensorRT cannot parse it ({errors})")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape) and any(tensor.name not in p for p in shapes):
            raise BundleError(f"{onnx_file}: input {tensor.name} has dynamic axes but no profile shape; "
                              "this graph is not one tiercel exported")
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for prof in shapes:
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in prof.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BundleError(f"{onnx_file}: TensorRT failed to build an engine (see the TensorRT log above)")
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    engine_file.write_bytes(bytes(engine))
    return engine_file


class _Recorder:
    """A session that keeps the feeds of its first call (the real feeds engine_parity replays)."""

    def __init__(self, session):
        self.session, self.feeds = session, None

    def run(self, feeds):
        if self.feeds is None:
            self.feeds = {k: np.array(v) for k, v in feeds.items()}
        return self.session.run(feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def random_feeds(feeds: dict, vocab: int, seed: int = 0) -> dict:
    """Feeds of the same shapes and dtypes as `feeds`, with random values: token ids inside the vocabulary,
    masks of ones, floats ~ N(0, 1); booleans (the merged decoder's branch) are kept."""
    rng, out = np.random.default_rng(seed), {}
    for name, value in feeds.items():
        if value.dtype == np.bool_:
            out[name] = value
        elif "mask" in name:
            out[name] = np.ones_like(value)
        elif np.issubdtype(value.dtype, np.integer):
            out[name] = rng.integers(0, vocab, value.shape).astype(value.dtype)
        else:
            out[name] = rng.standard_normal(value.shape).astype(value.dtype)
    return out


def _diff(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        return float("inf")
    ref = ref.astype(np.float32)
    return float(np.abs(got.astype(np.float32) - ref).max(initial=0.0)) / max(1.0, float(np.abs(ref).max(initial=0.0)))


def engine_parity(bundle, engines: dict[str, Path], precisions: dict[str, str], max_new_tokens: int = PARITY_NEW_TOKENS) -> dict:
    """Each engine against the ONNX graph it was built from, on onnxruntime (CPU).

    Real feeds: what each graph receives while the bundle answers the parity prompts on the parity image;
    random feeds: the same shapes with random values. Per engine the largest output difference relative to
    max(1, |reference|), and the greedy tokens of the prompts through the engines vs onnxruntime. BundleError
    when an fp16/fp32 engine differs by more than TOLERANCE or in a token; INT8 engines are recorded only
    (TensorRT's int8 kernels round differently from onnxruntime's Q/DQ emulation; the quantize guard judged the
    latter). Returns {graph: {real, random}, "greedy_identical": "k/n", ...}.
    """
    import tiercel.runtime as rt
    from tiercel.export.parity import PROMPTS, sample_image
    from tiercel.runtime.model import Model
    from tiercel.runtime.tensorrt import TensorRTSession

    ref = rt.load(bundle.root, backend="onnxruntime")
    ref.sessions = {n: _Recorder(s) for n, s in ref.sessions.items()}
    sessions = {n: TensorRTSession(f) for n, f in engines.items()}
    gpu = Model(bundle, sessions, ref.tokenizer, "tensorrt", "cuda", io_binding=True)
    image = sample_image(bundle.manifest.model.shape.image_size)
    prompts = list(PROMPTS)
    want = ref.generate_ids(ref.image_features(ref.pixel_values(image)), prompts, num_beams=1, max_new_tokens=max_new_tokens)
    got = gpu.generate_ids(gpu.image_features(gpu.pixel_values(image)), prompts, num_beams=1, max_new_tokens=max_new_tokens)
    vocab = bundle.manifest.model.shape.vocab_size
    report, failures = {}, []
    for name, recorder in ref.sessions.items():
        feeds = recorder.feeds
        row = {}
        for kind, f in (("real", feeds), ("random", random_feeds(feeds, vocab))):
            want_out, got_out = recorder.session.run(f), sessions[name].run(f)
            row[kind] = max(_diff(got_out[o], want_out[o]) for o in want_out)
        report[name] = {**row, "precision": precisions[name]}
        worst = max(row.values())
        if precisions[name] != "int8" and not worst <= TOLERANCE:
            failures.append(f"{name} differs from its ONNX graph by {worst:.3g} relative to its scale (> {TOLERANCE:g})")
    same = sum(a == b for a, b in zip(got, want))
    report.update(measure="max_rel_diff", tolerance=TOLERANCE, greedy_identical=f"{same}/{len(prompts)}",
                  max_new_tokens=max_new_tokens)
    if same < len(prompts) and all(p != "int8" for p in precisions.values()):
        bad = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        failures.append(f"greedy tokens differ from onnxruntime on prompt {prompts[bad]!r}: {got[bad][:12]} vs {want[bad][:12]}")
    if failures:
        raise BundleError(f"{bundle.root}: TensorRT parity failed: {failures[0]}; the engines were not kept "
                          "(rerun with --no-parity to keep them anyway)")
    return report


def add_engines(root: str | Path, max_batch: int | None = None, vision_batch: int = VISION_BATCH,
                workspace_gb: float | None = None, parity: bool = True, say=None) -> list[dict]:
    """Build a TensorRT engine for every ONNX graph of the bundle at `root`, here, and add them to its manifest.

    Engines go to root/tensorrt/<graph>.engine, replacing the bundle's earlier engines (listed in its manifest)
    only once every new engine is built and has passed `engine_parity`; until then the bundle is unchanged.
    Returns the manifest rows written.
    """
    from tiercel.fileio import sha256_file
    from tiercel.runtime.bundle import read_bundle
    from tiercel.runtime.manifest import write_manifest
    from tiercel.runtime.shape import ModelShape
    from tiercel.runtime.tensorrt import device_info

    say = say or (lambda _msg: None)
    bundle = read_bundle(root)  # a wrong path or a damaged manifest is named before the missing TensorRT
    trt = check_available()
    sources = bundle.entries("onnxruntime")
    bundle.verify(sources.values())
    shape = ModelShape(**bundle.manifest.model.shape.model_dump())
    max_batch = max_batch or default_max_batch(bundle.manifest.generation.num_beams)
    if max_batch < 1 or vision_batch < 1:
        raise BundleError(f"--max-batch and the vision batch must be >= 1 (got {max_batch}, {vision_batch})")
    here = device_info()
    say(f"building {len(sources)} TensorRT {trt.__version__} engines on {here['gpu']} (compute capability "
        f"{here['compute_capability']}), up to {max_batch} rows")
    staging = temp_name(bundle.root / "tensorrt")  # .tensorrt.tmp-PID-*, named before it exists (fileio.temp_name)
    try:
        make_temp(staging, bundle.root, directory=True)
        built, precisions = {}, {}
        with track("engines", len(sources), "engines") as bar:
            for name, entry in sources.items():
                onnx_file = bundle.root / entry.file
                precisions[name] = engine_precision(entry.precision, has_qdq(onnx_file))
                built[name] = build_engine(onnx_file, staging / f"{name}.engine",
                                           profiles(name, shape, max_batch, vision_batch), workspace_gb)
                bar.advance(1, note=name)
        report = engine_parity(bundle, built, precisions) if parity else {}
        if report:
            say(f"parity: worst {max(max(r['real'], r['random']) for n, r in report.items() if n in built):.3g} "
                f"relative, greedy identical {report['greedy_identical']}")
        info = {**here, "max_batch": max_batch, "vision_batch": vision_batch, "profiles": 2,
                "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        rows = []
        for name, entry in sources.items():
            rows.append({"name": name, "backend": "tensorrt", "file": f"tensorrt/{name}.engine",
                         "sha256": sha256_file(built[name]), "precision": precisions[name], "inputs": entry.inputs,
                         "outputs": entry.outputs, "engine": {**info, "parity": report.get(name, {})}})
        manifest = bundle.manifest.model_dump(mode="json")
        old = [g["file"] for g in manifest["graphs"] if g["backend"] == "tensorrt"]
        manifest["graphs"] = [g for g in manifest["graphs"] if g["backend"] != "tensorrt"] + rows
        if report:
            manifest["parity"] = {**manifest.get("parity", {}), "tensorrt": {k: v for k, v in report.items() if k not in built}}
        (bundle.root / "tensorrt").mkdir(exist_ok=True)
        for name, file in built.items():
            os.replace(file, bundle.root / "tensorrt" / f"{name}.engine")
        write_manifest(bundle.root, manifest)
        for rel in old:  # engines the manifest listed that no row names now (none: the same names are reused)
            if rel not in {r["file"] for r in rows}:
                (bundle.root / rel).unlink(missing_ok=True)
        return rows
    finally:
        shutil.rmtree(staging, ignore_errors=True)
