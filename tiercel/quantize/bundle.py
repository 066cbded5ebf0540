"""`tiercel quantize`: an fp32 bundle -> a quantised bundle, calibrated, guarded and checksummed.

Flow, all inside a temporary directory renamed to the output only when the guard holds (fileio.atomic_dir):
1. plan: the scheme (schemes.py) gives each graph a leaf scheme; the backend spec below says what is read
   and written (ONNX through onnxruntime.quantization, OpenVINO IR through NNCF, or the explicit Q/DQ ONNX
   that TensorRT builds INT8 engines from, which onnxruntime also runs).
2. calibrate: the fp32 bundle runs real samples and every graph's feeds are recorded (calibrate.py).
3. quantise each graph; write manifest.json with the scheme per graph, sizes and new sha256s.
4. guard: quantised vs fp32 on the val samples (guard.py). When the drop exceeds max_drop, the most sensitive
   layers (sensitivity.py) go back to higher precision - 1, 2, 4, ... of them - and step 3 runs again, until
   it holds or the retries run out (GuardError with the numbers). Higher precision is fp32, except in int4
   graphs on onnxruntime: int8 blocks first, and when the retries are spent, one more attempt with the same
   layers in fp32. Measured on the synthetic student (benchmarks/results/quantize_student_cpu.json): the
   plain int4 bundles held with 0-3 layers in int8 blocks at 0.30-0.34x of fp32 size, where fp32 layers had
   given 0.58-0.77x in an earlier run; mixed needed the fp32 attempt.
   A layer is kept back in every graph that holds its weight (sensitivity.units): the first decoder step and
   the decoder with past share theirs, and a lm_head kept back in the first step alone changes one token of an
   answer (the fidelity run's guard: its second attempt scored exactly as its first on every scheme).
5. tensorrt target with engines=True: once the guard holds, each Q/DQ graph is built into a strongly typed
   INT8 TensorRT engine on this GPU and checked against its graph (tiercel.export.tensorrt.add_engines; needs
   tensorrt and an NVIDIA GPU, checked before any work starts). Without engines=True, run `tiercel engines`
   on the device later.

Split decoders only: a merged decoder's If branches share nothing a quantiser can see (FALCON.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tiercel import __version__
from tiercel.errors import BundleError, ConfigError
from tiercel.fileio import atomic_dir, check_distinct, check_new_output, sha256_file, write_json
from tiercel.progress import track
from tiercel.quantize import guard as _guard
from tiercel.quantize.calibrate import Calibration, capture, load_samples, sft_file
from tiercel.quantize.schemes import GRAPH_ROLES, SchemeSpec, as_written, get_scheme, needs_calibration, plan
from tiercel.quantize.sensitivity import units
from tiercel.quantize.settings import QuantizeSettings
from tiercel.quantize.settings import settings as make_settings
from tiercel.runtime.bundle import read_bundle
from tiercel.runtime.manifest import MANIFEST, QuantizationSection, write_manifest


def quantize_bundle(bundle: str | os.PathLike, out: str | os.PathLike, scheme: str | None = None,
                    calib: str | os.PathLike | None = None, root: str | os.PathLike | None = None, *,
                    val: str | os.PathLike | None = None, settings: QuantizeSettings | None = None,
                    overwrite: bool = False, log: Callable[[str], None] | None = None, threads: int | None = None,
                    **changes) -> QuantizationSection:
    """Quantise the fp32 bundle at `bundle` into `out`. Returns the manifest's "quantization" section (typed).

    Args:
        scheme: a key of tiercel.quantize.SCHEMES (int8-static, int8-dynamic, int8-weight-only, int4-weight-only, mixed); the same
            as settings.scheme.
        calib: Falcon_SFT file or `tiercel data synth` folder (its train.json) for calibration; images under
            `root` (default: the file's folder). `n` samples; decoder steps are thinned to `n` feeds per graph.
        val: Falcon_SFT file for the guard (default: val.json beside the calibration file); no val data, no guard.
        settings: QuantizeSettings (tiercel.quantize.settings; every field documented there); `changes` are
            fields of it given as keywords (n=32, max_drop=0.05, backend="openvino", ...), applied on top.
            n_val: on a 0.8M-parameter student 28 samples (2 per task) let a 2% drop through that 600 test
            records showed, hence 224 (16 per task) by default.
    """
    s = make_settings(settings, **changes, scheme=scheme)
    scheme, n, max_drop, n_val = s.scheme, s.n, s.max_drop, s.n_val
    min_agreement, confidence, block_size, symmetric = s.min_agreement, s.confidence, s.block_size, s.symmetric
    policy, ratio, max_new_tokens, max_retries = s.policy, s.ratio, s.max_new_tokens, s.max_retries
    sensitivity, engines, target = s.sensitivity, s.engines, s.target
    say = log or (lambda _msg: None)
    if engines:
        from tiercel.export.tensorrt import check_available

        check_available()  # no tensorrt or no GPU: fail before minutes of calibration
    check_distinct(out, "", ("the bundle being quantized", bundle), whole=True)  # --overwrite would replace the input
    check_new_output(out, overwrite, MANIFEST)  # likewise for an output that atomic_dir would refuse after them
    src = read_bundle(bundle)
    if src.manifest.quantization is not None:
        raise ConfigError(f"{bundle}: is already quantized ({src.manifest.quantization.scheme}); quantize the fp32 "
                          "bundle it was made from")
    if src.manifest.decoder != "split":
        raise ConfigError(f"{src.where}: quantizing needs a split decoder (merged If-branches break under quantisation);"
                          f" re-export with --decoder split")
    entries = src.entries(target.reads)
    src.verify(entries.values())
    entries = {name: entry.model_dump() for name, entry in entries.items()}  # rows the quantized manifest copies
    spec = get_scheme(scheme, block_size=block_size, symmetric=symmetric, policy=policy, all_layers=s.all_layers)
    leaves = as_written(plan(spec, src.graph_names(), block_size=block_size, symmetric=symmetric,
                             all_layers=s.all_layers), target.name, block_size)
    if spec.kind == "weight-only":
        spec = next(iter(leaves.values()))
    if calib is None and needs_calibration({g: s for g, s in leaves.items() if s.kind == "static"}):
        raise ConfigError(f"--scheme {scheme}: needs calibration data; pass --calib FILE (a Falcon_SFT file or a "
                          "`tiercel data synth` folder)")
    calibration = None
    if calib is not None and needs_calibration(leaves):
        say(f"calibrating on {n} samples of {sft_file(calib)}")
        every_step = [g for g, leaf in leaves.items() if gptq(leaf) and g == "decoder_with_past_model"]
        calibration = capture(src.root, load_samples(calib, root, n), n=n, max_new_tokens=max_new_tokens,
                              keep_all=every_step if target.name == "onnxruntime" else (), threads=threads)
    val_samples = _val_samples(calib, val, root, n_val)
    ref = _reference(src, val_samples, max_new_tokens, threads)
    n_max, looks = max(n_val, s.n_val_max), _looks(len(val_samples), s.n_val_max)
    confidence = 1 - (1 - confidence) / looks if confidence > 0 else 0.0  # each look's share (Bonferroni)
    excluded: dict[str, list[str]] = {g: [] for g in leaves}
    ranking, attempts = None, []
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, marker=MANIFEST) as tmp:
        attempt, keep_in, cache = 0, "int8", {}  # int4 graphs keep layers back in int8 blocks first, then in fp32
        while True:
            graphs = _write_graphs(src, tmp, entries, leaves, target, calibration, excluded, ratio, keep_in, cache,
                                   threads)
            if calibration:
                calibration.every.clear()  # every decode step fed GPTQ (its rounded layers are in `cache`); free them
            section = _section(src, spec, target, calibration, graphs, entries, excluded)
            _write_manifest(src, tmp, graphs, section)
            verdict, model, ids = _check(tmp, target, val_samples, ref, max_drop, min_agreement, max_new_tokens,
                                         confidence, s.task_floor, threads)
            while (verdict is not None and len(val_samples) < n_max
                   and verdict.bound_missed_alone(max_drop, min_agreement)):
                more = _val_samples(calib, val, root, min(2 * len(val_samples), n_max),
                                    frozenset(x.index for x in val_samples))
                if not more:  # the val file has no more records
                    break
                say(f"attempt {len(attempts) + 1}: {verdict.line()}; only the bound missed: {len(more)} more val "
                    f"samples (to {len(val_samples) + len(more)})")
                val_samples = val_samples + more
                ref = _reference(src, val_samples, max_new_tokens, threads, known=ref)
                ids = ids + _guard.run_samples(model, more, max_new_tokens)
                verdict = _guard.compare(model.tokenizer, val_samples, ref["ids"], ids, max_drop, min_agreement,
                                         model.dialect, ref["scores"], confidence=confidence,
                                         max_task_drop=s.task_floor)
            model = ids = None  # free the attempt's sessions before the next attempt writes its graphs
            attempts.append({"excluded": sum(map(len, excluded.values())), "kept": _kept(graphs),
                             **(verdict.to_dict() if verdict else {})})
            if verdict is None or verdict.passed:
                break
            say(f"attempt {len(attempts)}: {verdict.line()}; {verdict.misses(max_drop, min_agreement)}")
            if ranking is None:
                ranking = _ranking(src, leaves, target, calibration, val_samples, max_new_tokens, calib, root,
                                   threads=threads)
            keep = [u for u in units(ranking) if any(r["node"] not in excluded[r["graph"]] for r in u)][: 2**attempt]
            if keep and attempt < max_retries:
                for r in (r for u in keep for r in u if r["node"] not in excluded[r["graph"]]):
                    excluded[r["graph"]].append(r["node"])
                attempt += 1
            elif keep_in == "int8" and _kept_counts(graphs).get("int8"):  # retries spent: the same layers once more, in fp32
                keep_in = "fp32"
            else:
                raise _guard.GuardError(f"{out}: {scheme} misses the accuracy floor after {len(attempts)} attempts "
                                        f"({_kept(graphs)}): {verdict.line()}, "
                                        f"max drop {max_drop:.2%}, min agreement {min_agreement:.3f}"
                                        + (f"; {verdict.task_line()}" if verdict.task_misses else "")
                                        + _guard.bound_hint(attempts, max_drop, min_agreement, len(val_samples)),
                                        attempts=attempts)
        section["guard"] = _guard_section(verdict, max_drop, min_agreement, attempts, val_samples)
        if section["guard"].get("caution"):
            say(f"caution: {section['guard']['caution']}")
        if sensitivity:
            ranking = ranking or _ranking(src, leaves, target, calibration, val_samples, max_new_tokens, calib, root,
                                          threads=threads)
            write_json(tmp / "sensitivity.json", ranking)
            section["sensitivity"] = "sensitivity.json"
        _write_manifest(src, tmp, graphs, section)
        if engines:  # INT8 engines from the Q/DQ graphs, on this GPU, checked against them
            from tiercel.export.tensorrt import add_engines

            add_engines(tmp, say=say)
    return QuantizationSection.model_validate(section)


def _kept_counts(graphs: list[dict]) -> dict[str, int]:
    """{precision: number of layers the guard kept back in it} over the manifest rows `graphs`."""
    counts: dict[str, int] = {}
    for g in graphs:
        q = g["quantization"]
        if q["excluded"]:
            counts[q["kept_in"]] = counts.get(q["kept_in"], 0) + len(q["excluded"])
    return counts


def _kept(graphs: list[dict]) -> str:
    """'N layers kept in fp32' (or 'in int8', or both)."""
    return ", ".join(f"{n} layers kept in {p}" for p, n in sorted(_kept_counts(graphs).items())) or "0 layers kept in fp32"


def _val_samples(calib, val, root, n_val, skip: frozenset[int] = frozenset()):
    """The first `n_val` val records balanced over tasks, less those at the positions in `skip` (an earlier,
    smaller draw: the larger draw holds it, so this is what growing the sample adds)."""
    if val is None and calib is not None and Path(calib).is_dir() and (Path(calib) / "val.json").is_file():
        val = Path(calib) / "val.json"
    if val is None or n_val < 1:
        return []
    from tiercel import tasks

    per_task = max(1, -(-n_val // len(tasks.TAGS)))
    return load_samples(val, root if root is not None else Path(val).parent, n_val, per_task=per_task, skip=skip)


def _looks(n_val: int, n_val_max: int) -> int:
    """How many times the guard may compare one bundle: once, and once more per doubling of n_val up to n_val_max.

    With more than one look, each compares at confidence 1 - (1 - confidence) / looks (Bonferroni), so the chance of
    passing a bundle whose true drop is over the limit stays within 1 - confidence across the looks, as with one."""
    looks, n = 1, n_val
    while 0 < n < n_val_max:
        n, looks = min(2 * n, n_val_max), looks + 1
    return looks


def _reference(src, samples, max_new_tokens, threads=None, known: dict | None = None):
    """The fp32 bundle's generations and headline scores on `samples`; `known` (an earlier result on the first of
    them, when the guard grows its sample) is not generated again."""
    if not samples:
        return None
    import tiercel.runtime

    model = tiercel.runtime.load(src.root, backend="onnxruntime", threads=threads)
    done = known["ids"] if known else []
    ids = done + _guard.run_samples(model, samples[len(done):], max_new_tokens)
    return {"ids": ids, "scores": _guard.headlines(model.tokenizer, samples, ids, model.dialect)}


def gptq(leaf) -> bool:
    """Whether the leaf rounds its weights against recorded activations (int4 on onnxruntime: gptq.py), which reads
    every decode step of decoder_with_past rather than the thinned few."""
    return leaf.int4


def _write_graphs(src, tmp: Path, entries, leaves, target, calibration, excluded, ratio, keep_in: str,
                  cache: dict, threads: int | None = None) -> list[dict]:
    """Quantise every graph into `tmp`; `cache` ({graph: {}}) carries per-graph work across the guard's attempts."""
    rows = []
    for name, leaf in leaves.items():
        entry = entries[name]
        feeds = calibration.feeds.get(name) if calibration else None
        if gptq(leaf) and calibration and calibration.every.get(name):
            feeds = calibration.every[name]  # GPTQ: every decode step, not the thinned few
        role = GRAPH_ROLES.get(name, "")
        if target.name == "openvino":
            from tiercel.quantize.openvino_backend import ir_files, quantize_ir

            dst = tmp / "openvino" / f"{name}.xml"
            onnx = _onnx_files(src).get(name)  # the IR's source: names the IR changed are found through it
            report = quantize_ir(src.root / entry["file"], dst, leaf, role, feeds, excluded[name], ratio, onnx,
                                 cache.setdefault(name, {}))
            files = ir_files(dst)
        else:
            from tiercel.quantize.onnx_backend import graph_files, quantize_graph

            dst = tmp / f"{name}.onnx"
            report = quantize_graph(src.root / entry["file"], dst, leaf, role, feeds, excluded[name], target.name, keep_in,
                                    cache.setdefault(name, {}), threads)
            files = graph_files(dst)
        rows.append(_entry(tmp, entry, files, leaf, report, target))
    shutil.copyfile(src.root / src.manifest.tokenizer.file, tmp / src.manifest.tokenizer.file)
    return rows


def _entry(tmp: Path, entry: dict, files: list[Path], leaf: SchemeSpec, report: dict, target) -> dict:
    main, *extra = files
    return {**entry, "backend": target.runs, "file": main.relative_to(tmp).as_posix(), "sha256": sha256_file(main),
            "extra_files": {f.relative_to(tmp).as_posix(): sha256_file(f) for f in extra}, "precision": leaf.name,
            "quantization": {**leaf.to_dict(), "layers": len(report.get("quantized", [])) if "quantized" in report else None,
                             "excluded": report.get("excluded", []),
                             **{k: v for k, v in report.items() if k not in ("quantized", "excluded")}}}


def _size(root: Path, entry: dict) -> int:
    return sum((root / f).stat().st_size for f in [entry["file"], *entry.get("extra_files", {})])


def _section(src, spec, target, calibration: Calibration | None, graphs, entries, excluded) -> dict:
    sizes = {g["name"]: {"fp32_bytes": _size(src.root, entries[g["name"]])} for g in graphs}
    return {"scheme": spec.name, "spec": spec.to_dict(), "backend": target.name, "runs_on": target.runs,
            "graphs": {g["name"]: g["precision"] for g in graphs}, "sizes": sizes,
            "calibration": calibration.summary() if calibration else None,
            "source": {"bundle": str(src.root), "manifest_sha256": sha256_file(src.root / MANIFEST)},
            "excluded": {k: list(v) for k, v in excluded.items() if v}}


def _write_manifest(src, tmp: Path, graphs: list[dict], section: dict) -> None:
    for g in graphs:  # sizes of what is on disk now
        row = section["sizes"][g["name"]]
        row["bytes"] = _size(tmp, g)
        row["ratio"] = round(row["bytes"] / max(row["fp32_bytes"], 1), 4)
    before = sum(r["fp32_bytes"] for k, r in section["sizes"].items() if k != "total")
    after = sum(r["bytes"] for k, r in section["sizes"].items() if k != "total")
    section["sizes"]["total"] = {"fp32_bytes": before, "bytes": after, "ratio": round(after / max(before, 1), 4)}
    manifest = src.manifest.model_dump(mode="json")
    manifest["graphs"] = graphs
    manifest["parity"] = {}  # fp32 parity no longer describes these graphs; quantization.guard does
    manifest["quantization"] = section
    manifest["provenance"] = {**manifest["provenance"], "quantized_by": f"tiercel {__version__}"}
    write_manifest(tmp, manifest)


def _check(tmp, target, samples, ref, max_drop, min_agreement, max_new_tokens, confidence, max_task_drop,
           threads=None):
    """(verdict, the quantized model, its generations); (None, None, None) without val samples."""
    if not samples:
        return None, None, None
    import tiercel.runtime

    model = tiercel.runtime.load(tmp, backend=target.runs, threads=threads)  # verifies every checksum just written
    ids = _guard.run_samples(model, samples, max_new_tokens)
    return _guard.compare(model.tokenizer, samples, ref["ids"], ids, max_drop, min_agreement, model.dialect, ref["scores"],
                          confidence=confidence, max_task_drop=max_task_drop), model, ids


def _onnx_files(src) -> dict[str, Path]:
    """{graph name: its ONNX file} of the fp32 bundle `src` (the sensitivity ranking and the IRs' names read them)."""
    return {g.name: src.root / g.file for g in src.manifest.graphs if g.backend == "onnxruntime"}


def _ranking(src, leaves, target, calibration, val_samples, max_new_tokens, calib=None, root=None,
             max_feeds: int = 4, threads: int | None = None) -> list[dict]:
    """All quantised layers of all graphs, most sensitive first (ONNX graphs; names shared with the IR)."""
    from tiercel.quantize.sensitivity import layer_sensitivity

    if calibration is None:  # no static graph needed it: 16 samples are enough for the layer ranking
        samples = load_samples(calib, root, 16) if calib is not None else val_samples[:16]
        if not samples:
            raise BundleError("sensitivity needs samples; pass --calib")
        calibration = capture(src.root, samples, n=16, max_new_tokens=max_new_tokens, threads=threads)
    onnx = _onnx_files(src)
    rows, ranked = [], {name: leaf for name, leaf in leaves.items() if leaf.kind != "keep"}
    with track("sensitivity", len(ranked), "graphs") as bar:
        for name, leaf in ranked.items():
            rows += layer_sensitivity(onnx[name], calibration.feeds[name], leaf, GRAPH_ROLES.get(name, ""),
                                      max_feeds=max_feeds, graph=name, target=target.name, threads=threads)
            bar.advance(1, note=name)
    return sorted(rows, key=lambda r: -r["error"])


def _guard_section(verdict, max_drop, min_agreement, attempts, samples) -> dict:
    if verdict is None:
        return {"run": False, "reason": "no val samples (pass --val FILE or a synth folder as --calib)"}
    caution = _guard.caution(verdict)
    return {"run": True, "passed": verdict.passed, "max_drop": max_drop, "min_agreement": min_agreement,
            **verdict.to_dict(), "attempts": attempts, **({"caution": caution} if caution else {})}
