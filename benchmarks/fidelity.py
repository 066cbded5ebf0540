"""The fidelity table of issue #22: teacher -> CE / KD / KD+hidden students -> fp32, INT8 and INT4 bundles.

One command, driven by benchmarks/recipes/fidelity.yaml (every setting is there, nothing about the models is
in this file; the schema is benchmarks/fidelity_config.py):

1. generates the synthetic benchmark (`data:` n, image size, seed, difficulty knobs of tiercel.data.synth.Knobs);
2. trains the teacher from `teacher:`, a tiercel recipe fragment merged over the data paths and parsed by
   tiercel.recipe, so every recipe key works (or `teacher: {stages: [fragment, ...]}`, each stage starting from
   the previous one's checkpoint);
3. checks that the student is >= 4x smaller than the teacher, then trains the students from `student:` with each
   objective (ce, kd, kd_hidden) for each seed;
4. exports the `bundles.source` student (KD+hidden unless the YAML says otherwise) of the first seed to an fp32
   bundle (ONNX + OpenVINO IR) and quantizes it with each scheme on each backend
   (tiercel.quantize.quantize_bundle, accuracy guard on; a scheme the guard refuses is
   quantized again without it, so its column still shows the cost on test, marked as refused);
5. scores every model and bundle on the test split (tiercel.evaluate, greedy) and runs the image-use probe
   (tiercel.evaluate.image_use) on every PyTorch model; decodes the first `constrained.limit` test records per
   task on each bundle of `constrained.backend` unconstrained, constrained one token per step and constrained
   with jump-forward (benchmarks/constrained_decoding.py's modes; issue #28's parse warnings and decoder steps);
6. writes benchmarks/results/fidelity.json (commit, command, machine, wall time per stage, samples/s,
   parameters, per-model per-task scores, the targets checked) and fidelity.md (benchmarks/fidelity_report.py).

    .venv/bin/python benchmarks/fidelity.py                 # the full run (OMP_NUM_THREADS=1 on a shared machine)
    .venv/bin/python benchmarks/fidelity.py --jobs 2        # students, quantizations and evaluations two at a time
    .venv/bin/python benchmarks/fidelity.py --quick         # plumbing check, numbers meaningless
    .venv/bin/python benchmarks/fidelity.py --render        # only rewrite the .md from the JSON (--quick: its own)

Resumable: every finished stage (data, each training run, export, each quantized bundle, each evaluation and
probe) is stored under --work with a fingerprint of its settings and inputs; a rerun skips the stages whose
fingerprint still matches and redoes those whose settings changed, with everything after them. The CE students
read nothing of the teacher but its tokenizer, so they are fingerprinted on that file's bytes, not on the teacher:
a teacher stage added later retrains the KD students only. A killed training run resumes from its newest
checkpoint. With --jobs N, each stage starts in one of N child processes as soon as the stages it reads are
stored and a process is free (training runs first, then finish stages, the export, quantizations, evaluations,
probes, constrained decoding): a student's finish stage and evaluation start when its own training ends, and the
bundles when the source student is finished, not after every student. SIGTERM to the main process stops the run:
each training run checkpoints its last step, the other stages in flight are dropped, the stages not started never
start, the results JSON is left as it was, and the command exits 143 once the trainers have saved.
On a new machine (no training run and no finished stage under --work),
benchmarks/fidelity_carry.py's last save (committed under benchmarks/carry/fidelity/) is restored first, so the
run goes on from there (docs/fidelity.md). A stage after the teacher that fails (a student, the export, a bundle's
quantization or evaluation, a probe) is recorded as that column's error, the rest still runs, and the command
exits 1 naming it; a rerun retries it. `--fresh` starts over.

--quick caps the data at 280 records, every training run at 4 steps, evaluation at 2 test records per task and 16
new tokens, the probe at 4 records per task and calibration at 4 samples (fidelity_config.QUICK): every stage
runs, in about 2 minutes on one thread of a busy 2-core CPU; results go to fidelity_quick.json / .md.

How long a full run takes, an estimate, not a measurement: training is steps x batch / samples per second, per run.
With the YAML as committed, on the 2-core EPYC with one thread per run: the teacher trained at about 50 samples/s
once compiled (3.2 steps/s of 16, read from its metrics.jsonl while another 1-thread run shared the machine), so
60,000 x 16 / 50 = 5.3 h, and its second stage 6,000 x 16 / 42 = 0.6 h; students at the rates
benchmarks/student_pilot.py measured (benchmarks/results/student_pilot.md: CE 98, KD 68 samples/s after compiling):
2 x 480,000 / 98 + 4 x 480,000 / 68 = 10.6 h of one core (5.3 h at --jobs 2; measured since: the CE students took
6,051 and 6,107 s each at --jobs 2, 78.6 samples/s, so about 11.2 h, 5.6 h at --jobs 2); 8 quantizations, 18 min in
all on the pilot student at 224 val samples (student_pilot.md), so up to 1.2 h at the YAML's 896 (4x the guard's
samples, an upper estimate; --jobs 2 runs two at a time, one thread each); 17 evaluations of the 16,800 test records,
64 at a time, at the rates measured on the teacher at step 46,000 (benchmarks/results/eval_batch_cpu.md: 95 records/s
as a checkpoint, 333 as an onnxruntime fp32 bundle), 7 x 16,800 / 95 + 10 x 16,800 / 333 s = about 29 min (quantized
and OpenVINO bundles not measured). About 18.8 hours of one core in all (5.3 + 0.6 + 11.2 + 1.2 + 0.5): run it in the
background over several sessions (every stage resumes); the JSON records the wall time of every stage.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's tiercel (the commit the JSON records), not the installed one
from fidelity_config import (  # noqa: E402
    BundleSpec,
    Config,
    DataSpec,
    ProbeSpec,
    check_recipes,
    data_paths,
    finish_recipe,
    load_config,
    quantize_inputs,
    quantize_settings,
    student_recipe,
    teacher_recipes,
)
from fidelity_report import OBJECTIVES, SIZE_RATIO, bundle_key, render, targets, teacher_stage  # noqa: E402
from image_use import commit, probe_checkpoint, write_result  # noqa: E402
from synth_runs import params, read_predictions, score, train  # noqa: E402

from tiercel.errors import Terminated  # noqa: E402
from tiercel.fileio import atomic_write_text, finite, sha256_file  # noqa: E402

RESULTS = HERE / "results"


# ---- stages --------------------------------------------------------------------------------------------
def fingerprint(inputs, work: Path) -> str:
    """A stage's key: its inputs hashed with the work folder's path written as $WORK, so the same run moved to
    another folder or machine (benchmarks/fidelity_carry.py) keeps its keys."""
    text = json.dumps(inputs, sort_keys=True, default=str).replace(str(work), "$WORK")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Stages:
    """Finished stages on disk, one JSON each: the result, the wall time and the fingerprint of the stage's inputs
    (settings and the fingerprints of the stages it reads). A stage whose stored fingerprint matches is not rerun."""

    def __init__(self, folder: Path):
        self.folder, self.keys, self.times = folder, {}, {}  # folder: <work>/stages
        folder.mkdir(parents=True, exist_ok=True)

    def key(self, inputs) -> str:
        return fingerprint(inputs, self.folder.parent)

    def _stored(self, name: str, inputs: dict, needs: tuple[str, ...]) -> tuple[str, dict | None]:
        """The stage's key (its inputs and the keys of the stages it reads) and its stored record where that
        record has this key (None: it must run). Every stage in `needs` has a key."""
        key = self.key({"inputs": inputs, "needs": {n: self.keys[n] for n in needs}})
        path = self.folder / (name.replace("/", "__") + ".json")
        done = json.loads(path.read_text()) if path.is_file() else None
        return key, done if done is not None and done.get("key") == key else None

    def stored(self, name: str, inputs: dict, needs: tuple[str, ...] = ()) -> bool:
        """Whether `run` with these arguments would take the stored result (nothing to compute)."""
        return all(n in self.keys for n in needs) and self._stored(name, inputs, needs)[1] is not None

    def run(self, name: str, inputs: dict, fn, needs: tuple[str, ...] = (), soft: bool = True, timed: bool = False):
        """The result of `fn()` (stored, or computed now). With `soft`, an exception (or a failed stage in `needs`)
        is recorded as this stage's error and None returned; otherwise it propagates. With `timed`, fn() returns
        (result, its wall time where it ran: `timed` in a child process) and that time is stored."""
        missing = [n for n in needs if n not in self.keys]
        if missing:
            self.times[name] = {"seconds": 0.0, "status": "skipped", "error": f"needs {missing[0]}, which failed"}
            return None
        key, done = self._stored(name, inputs, needs)
        self.keys[name] = key
        if done is not None:
            self.times[name] = {"seconds": done["seconds"], "status": "reused"}
            return done["result"]
        path = self.folder / (name.replace("/", "__") + ".json")
        if not timed:  # a pooled stage says so when it starts (Run.flow)
            print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
            if timed:
                result, seconds = result
        except Terminated:
            raise  # SIGTERM stops the run, not this stage: nothing after it starts
        except Exception as err:
            if not soft:
                raise
            traceback.print_exc()
            del self.keys[name]
            self.times[name] = {"seconds": time.perf_counter() - t0, "status": "error",
                                "error": f"{type(err).__name__}: {one_line(err)}"}
            print(f"[{name}] failed: {self.times[name]['error']}", flush=True)
            return None
        seconds = seconds if timed else time.perf_counter() - t0
        atomic_write_text(path, json.dumps({"key": key, "seconds": seconds, "result": finite(result)}, indent=1) + "\n")
        self.times[name] = {"seconds": seconds, "status": "ran"}
        print(f"[{name}] {seconds:.1f} s", flush=True)
        return result

    def error(self, *names: str) -> str | None:
        return next((f"{n}: {self.times[n]['error']}" for n in names if self.times.get(n, {}).get("error")), None)


def keyed_recipe(recipe: dict) -> dict:
    """A student recipe as its stage is keyed. One without a teacher (the CE student) reads the teacher's folder
    only for its tokenizer, so the tokenizer's path is replaced by a hash of the file: a teacher stage added later
    (which copies the same tokenizer) leaves that student's stored runs valid. Other recipes as they are."""
    tok = recipe.get("tokenizer", {})
    if recipe.get("teacher", {}).get("kind") != "none" or tok.get("source") != "file":
        return recipe
    keyed = {k: v for k, v in tok.items() if k != "path"} | {"sha256": sha256_file(tok["path"])}
    return {**recipe, "tokenizer": keyed}


_BUSY: list[bool] = []  # in a pool worker: non-empty while guarded() runs a call


def _on_sigterm(signum, frame) -> None:
    """A pool worker's SIGTERM: the call it runs stops (Terminated; a trainer installs its own handler, which
    checkpoints first); an idle worker ignores it and leaves when the pool shuts down. Killed by the signal, an
    idle worker would break the pool, and ProcessPoolExecutor then joins the busy one forever: the run hung after
    its trainer had checkpointed."""
    if _BUSY:
        raise Terminated("stopped by SIGTERM")


def _worker_init() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def guarded(marker: str, fn, *args, **kwargs):
    """In a pool worker: fn(*args, **kwargs), unless the main process has been stopped (its marker file exists).
    ProcessPoolExecutor moves up to jobs + 1 submitted calls into its call queue, where cancel_futures cannot reach
    them, so a worker whose trainer has just checkpointed would otherwise start the next queued run."""
    if os.path.exists(marker):
        what = args[0] if fn is timed and args else fn
        raise Terminated(f"{getattr(what, '__name__', what)}: not started, the run was stopped")
    _BUSY.append(True)
    try:
        return fn(*args, **kwargs)
    finally:
        _BUSY.clear()


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), its wall time in seconds): a pool call's own time, not how long the main process waited."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


class Children:
    """A ProcessPoolExecutor whose calls go through `guarded`, with the stop marker they check."""

    def __init__(self, pool, marker: Path):
        self.pool, self.marker = pool, marker

    def submit(self, fn, *args, **kwargs):
        return self.pool.submit(guarded, str(self.marker), fn, *args, **kwargs)

    def stop(self) -> None:
        """Queued calls will not start; running ones get SIGTERM (a training run checkpoints and stops)."""
        self.marker.touch()
        for process in list((getattr(self.pool, "_processes", None) or {}).values()):  # no public way to reach them
            process.terminate()


@contextmanager
def children(jobs: int):
    """A pool of `jobs` fresh processes (spawned: no forked torch state), or None for jobs <= 1. Each child takes the
    parent's environment, so OMP_NUM_THREADS=1 holds in every one of them. If the main process stops (SIGTERM,
    Ctrl-C, a crash), the calls still queued never start and the running ones are sent SIGTERM; the main process
    then waits for them to end (a trainer's checkpoint)."""
    if jobs <= 1:
        yield None
        return
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    folder = Path(tempfile.mkdtemp(prefix="fidelity-pool-"))
    pool = Children(ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init),
                    folder / "stop")
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.pool.shutdown(wait=True, cancel_futures=True)
        pool.marker.unlink(missing_ok=True)
        folder.rmdir()


def one_line(err: Exception) -> str:
    """An exception's message on one line (a table cell)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


# ---- the work ------------------------------------------------------------------------------------------
def make_data(cfg: DataSpec, folder: Path) -> dict:
    from dataclasses import asdict

    from tiercel.data.synth import generate
    from tiercel.data.synth.knobs import Knobs
    from tiercel.data.synth.writer import split_sizes

    meta = generate(folder, n=cfg.n, size=cfg.size, seed=cfg.seed, knobs=Knobs(**cfg.knobs), overwrite=True)
    changed = {k: v for k, v in meta["knobs"].items() if asdict(Knobs())[k] != v}
    return {"folder": str(folder), "n": cfg.n, "size": cfg.size, "seed": cfg.seed, "knobs": meta["knobs"],
            "knobs_changed": changed, "records": split_sizes(cfg.n), "test_records": split_sizes(cfg.n)["test"]}


def student_size(recipe: dict, teacher: Path) -> tuple[int, int | None]:
    """(teacher parameters, a new student's parameters from its recipe, or None when it does not start from a preset)."""
    from tiercel.models import build, load_checkpoint
    from tiercel.recipe import parse_recipe

    ckpt = load_checkpoint(teacher)
    s = parse_recipe(recipe).student
    if s.init != "preset":
        return sum(p.numel() for p in ckpt.model.parameters()), None
    model = build(s.preset, device="meta", vocab_size=len(ckpt.tokenizer), image_token_id=ckpt.tokenizer.image_id, **s.overrides)
    return sum(p.numel() for p in ckpt.model.parameters()), sum(p.numel() for p in model.parameters())


def probe(model: str, test: Path, root: Path, cfg: ProbeSpec) -> dict:
    """The image-use probe's numbers per task that the table reads (the permuted and blank gaps, the spread)."""
    r = probe_checkpoint(model, test, root, None, cfg.n, cfg.batch_size)
    keep = ("records", "loss_true", "loss_gap_permuted", "loss_gap_blank", "coord_loss_gap_permuted",
            "first_coord_loss_gap_permuted", "image_spread")
    return {"seconds": r["seconds"], "per_task": {t: {k: p[k] for k in keep} for t, p in r["per_task"].items()}}


def quantize(fp32: Path, out: Path, backend: str, scheme: str, cfg: BundleSpec, data: dict,
             threads: int | None = None) -> dict:
    """One quantized bundle through the accuracy guard. When the guard refuses the scheme (GuardError: nothing is
    written), the same scheme is quantized again without the guard (n_val 0) so the table still shows its cost on
    the test split; the record says `refused` with the guard's one line, and the table marks the column."""
    from tiercel.quantize.bundle import quantize_bundle
    from tiercel.quantize.guard import GuardError

    settings = quantize_settings(cfg, backend, scheme)
    make = functools.partial(quantize_bundle, fp32, out, calib=data["train"], root=data["root"], val=data["val"],
                             overwrite=True, log=print, threads=threads)
    try:
        section = make(settings=settings)
    except GuardError as err:
        make(settings=settings.model_copy(update={"n_val": 0}))
        return {"bundle": str(out), "kept": None, "guard": {"run": True, "passed": False, "refused": one_line(err),
                                                            "attempts": [_attempt(a) for a in err.attempts]}}
    guard = section.guard.model_dump(mode="json") if section.guard else {}
    attempts = [_attempt(a) for a in guard.pop("attempts", [])]
    return {"bundle": str(out), "guard": guard | {"attempts": attempts}, "kept": attempts[-1]["kept"] if attempts else None}


def _attempt(a: dict) -> dict:
    """What the results keep of one guard attempt."""
    return {k: a.get(k) for k in ("excluded", "kept", "drop", "drop_bound", "token_agreement", "task_misses")}


def constrained(bundle: Path, backend: str, test: Path, limit: int, max_new_tokens: int, threads: int | None) -> dict:
    """Issue #28 item 4 on one bundle, greedy: {mode: constrained_decoding.one_round's summary} for unconstrained,
    constrained one token per step (stepwise) and constrained with jump-forward."""
    from constrained_decoding import MODES, one_round

    import tiercel.runtime as rt

    model = rt.load(bundle, backend=backend, threads=threads)
    base = {"num_beams": 1, "max_new_tokens": max_new_tokens}
    return {mode: one_round(model, test, limit, {**base, **extra}) for mode, extra in MODES.items()}


def export(student: str, fp32: Path, backends: tuple[str, ...]) -> dict:
    from tiercel.export.bundle import export_checkpoint

    return {"bundle": str(export_checkpoint(student, fp32, backends=backends, decoder="split", overwrite=True))}


def paired(base: Path, other: Path, rounds: int, confidence: float, seed: int) -> dict:
    """Two evaluations' predictions of the same test records compared task by task with a paired bootstrap
    (tiercel.evaluate.compare.compare_rows): per task and for the 14-task average, both headlines, the change
    and the relative change with their intervals, and the answers that differ."""
    from tiercel.evaluate.compare import compare_rows

    got = compare_rows(read_predictions(base), read_predictions(other), rounds, confidence, seed, (str(base), str(other)))
    keep = ("base", "other", "change", "relative", "change_ci", "relative_ci")
    return {"rounds": rounds, "confidence": confidence, "average": {k: got["average"].get(k) for k in keep},
            "per_task": {t: {k: p.get(k) for k in (*keep, "records", "answers_changed")} for t, p in got["per_task"].items()}}


def bundle_bytes(bundle: Path, backend: str) -> int:
    from quantize_cpu import sizes

    return sizes(bundle, backend)["bundle_bytes"]


PAIRED_ROUNDS = 1000  # bootstrap resamples of each compare stage (tiercel compare's default)
STAGE_ORDER = ("train", "finish", "export", "quantize", "eval", "compare", "probe", "constrained")  # which ready stage starts first


class Node(NamedTuple):
    """One stage for Run.flow: `fn(*args, **kwargs)`, keyed on `inputs` and the stages in `needs`; `then(result)`
    (None where it failed), called in the main process once the stage is recorded, gives the nodes it leads to."""

    name: str
    inputs: dict
    needs: tuple[str, ...]
    fn: Callable
    args: tuple = ()
    kwargs: dict | None = None
    then: Callable[[Any], list] | None = None


class Run:
    """One benchmark run: its recipes (checked when made), the stages in order, the models they produce."""

    def __init__(self, cfg: Config, work: Path, quick: bool, threads: int | None, jobs: int = 1):
        from tiercel.evaluate import check_protocols, check_tasks

        self.cfg, self.work, self.threads, self.jobs = cfg, work, threads, jobs
        folder = work / "data"
        self.data = data_paths(folder)
        self.t_recipes = teacher_recipes(cfg, work, self.data, quick)
        self.teacher = Path(self.t_recipes[-1]["out"]) / "student"
        self.s_recipes = {(o, s): student_recipe(cfg, work, self.data, self.teacher, o, s, quick)
                          for o in OBJECTIVES for s in cfg.student.seeds}
        self.f_recipes = {k: finish_recipe(cfg, r, quick) for k, r in self.s_recipes.items() if cfg.student.finish is not None}
        check_recipes(self.t_recipes + list(self.s_recipes.values()) + list(self.f_recipes.values()))
        check_protocols(cfg.eval.protocol, check_tasks(None))  # Falcon's scoring libraries, before any work
        for backend in cfg.bundles.backends:
            for scheme in cfg.bundles.schemes:
                try:  # a bad setting fails here, not after the training
                    quantize_settings(cfg.bundles, backend, scheme)
                except ValueError as err:  # pydantic's ValidationError is one
                    sys.exit(f"bundles.quantize ({backend}, {scheme}): {one_line(err)}")
        self.stages, self.models = Stages(work / "stages"), {}
        self.torch_models: dict[str, tuple[str, str]] = {}  # name -> (its training stage, checkpoint)
        self.compared_models: set[str] = set()  # the models whose compare stage is made

    def __call__(self, results: dict) -> None:
        """Every stage; results["models"], ["stages"] and ["data"] fill in as they finish."""
        results["models"], results["stages"] = self.models, self.stages.times
        results["data"] = self.stages.run("data", self.cfg.data.model_dump(), self.make_data, soft=False)
        t_params = self.train_teacher()
        nodes = self.student_nodes() + self.made("teacher", *self.torch_models["teacher"])
        for backend, scheme, key, _ in self.bundle_list():  # the table's order, whatever order they finish in
            self.models[key] = {"kind": "bundle", "backend": backend, "scheme": scheme, "source": self.source}
        self.flow(nodes)
        for _, scheme, key, out in self.bundle_list():
            m = self.models[key]
            m["bundle"], stage = str(out), "export" if scheme == "fp32" else f"quantize/{m['backend']}/{scheme}"
            m.setdefault("eval", None)
            m["error"] = m.get("error") or self.stages.error("export", stage, f"eval/{key}")
        s = self.models[self.source]
        results["size_ratio"] = t_params / s["params"] if self.source in self.torch_models else None

    @property
    def source(self) -> str:
        """The student the bundles are made from: bundles.source of the first seed."""
        return f"{self.cfg.bundles.source}/seed{self.cfg.student.seeds[0]}"

    def make_data(self) -> dict:
        return make_data(self.cfg.data, Path(self.data["root"]))

    def train_teacher(self) -> int:
        """Train the teacher's stages; check the student's size against it; returns its parameters."""
        prev, runs = "data", []
        for i, recipe in enumerate(self.t_recipes):
            name = teacher_stage(i)
            key = self.stages.key({"recipe": recipe, "after": self.stages.keys[prev]})
            runs.append(self.stages.run(name, recipe, lambda: train(recipe, key), needs=(prev,), soft=False))
            prev = name
        t_params, s_params = student_size(self.s_recipes[(self.cfg.bundles.source, self.cfg.student.seeds[0])], self.teacher)
        if s_params is not None:
            print(f"teacher {t_params / 1e6:.2f}M parameters, student {s_params / 1e6:.2f}M: {t_params / s_params:.2f}x smaller")
            if t_params < SIZE_RATIO * s_params:
                sys.exit(f"student.recipe: the student is only {t_params / s_params:.2f}x smaller than the teacher; the "
                         f"issue asks >= {SIZE_RATIO:g}x: shrink student.recipe.student.overrides")
        self.models["teacher"] = {"kind": "torch", "objective": "teacher", "path": str(self.teacher), "params": t_params,
                                  "train": {"seconds": sum(r["seconds"] for r in runs), "samples_per_s": runs[-1]["samples_per_s"],
                                            "train_seconds": [r.get("train_seconds") for r in runs],
                                            "final_loss": runs[-1]["final_loss"], "stages": runs}}
        self.torch_models["teacher"] = (prev, str(self.teacher))
        return t_params

    # ---- the stages after the teacher, as nodes for flow(): each names the nodes it makes possible ----------------
    def student_nodes(self) -> list[Node]:
        """Every student's training run. Each one's result leads to its student.finish stage where the YAML has one,
        and the last stage to the student's eval and probe (and, for the bundles' source, to its bundles)."""
        teacher_stage = self.torch_models["teacher"][0]
        nodes = []
        for k, r in self.s_recipes.items():
            name = f"{k[0]}/seed{k[1]}"
            self.models[name] = {"kind": "torch", "objective": k[0], "seed": k[1]}  # the table's order
            if r["teacher"].get("kind") == "none":  # it reads only the teacher's tokenizer: keyed on that file's bytes
                inputs, after = keyed_recipe(r), ("data",)
                key = self.stages.key({"recipe": inputs, "data": self.stages.keys["data"]})
            else:
                inputs, after = r, (teacher_stage,)
                key = self.stages.key({"recipe": r, "teacher": self.stages.keys[teacher_stage]})
            nodes.append(Node(f"train/{name}", inputs, after, train, (r, key), then=functools.partial(self.trained, k)))
        return nodes

    def trained(self, k: tuple[str, int], result: dict | None) -> list[Node]:
        name = f"{k[0]}/seed{k[1]}"
        stage, m = f"train/{name}", self.models[name]
        m |= {"train": result, "error": self.stages.error(stage)}
        if not result:
            return self.export_node(name, stage, None)  # for the source: its bundles, recorded as skipped
        m |= {"path": result["student"], "params": params(result["student"])}
        f = self.f_recipes.get(k)
        if f is None:
            return self.made(name, stage, result["student"])
        inputs = keyed_recipe(f)  # keyed_recipe hashes the tokenizer: once each
        key = self.stages.key({"recipe": inputs, "after": self.stages.keys[stage]})
        return [Node(f"finish/{name}", inputs, (stage,), train, (f, key), then=functools.partial(self.finished, name))]

    def finished(self, name: str, result: dict | None) -> list[Node]:
        """student.finish: the table reads this stage's student. One whose finish fails is not scored (its columns
        say error), not scored unfinished."""
        m = self.models[name]
        m["finish"], m["error"] = result, m.get("error") or self.stages.error(f"finish/{name}")
        if not result:
            return self.export_node(name, f"finish/{name}", None)
        m["path"] = result["student"]
        return self.made(name, f"finish/{name}", result["student"])

    def made(self, name: str, stage: str, path: str) -> list[Node]:
        """A PyTorch model's last stage is stored: its eval and probe; for the bundles' source, its export too."""
        self.torch_models[name] = (stage, path)
        test, root, pr = Path(self.data["test"]), Path(self.data["root"]), self.cfg.probe
        nodes = [Node(f"eval/{name}", self.eval_inputs(), (stage,), score, (path,), self.score_args(f"eval/{name}"),
                      functools.partial(self.scored, name, "eval")),
                 Node(f"probe/{name}", pr.model_dump(), (stage,), probe, (path, test, root, pr),
                      then=functools.partial(self.scored, name, "probe"))]
        return nodes + self.export_node(name, stage, path)

    def export_node(self, name: str, stage: str, path: str | None) -> list[Node]:
        """For the bundles' source, the export of its last stage `stage`. Where that stage failed, the export and
        every stage after it are recorded as skipped (their columns say which stage failed), so the source is
        never exported unfinished."""
        if name != self.source:
            return []
        backends = tuple(self.cfg.bundles.backends)
        return [Node("export", {"backends": backends}, (stage,), export, (path, self.work / "bundles" / "fp32", backends),
                     then=self.exported)]

    def scored(self, name: str, what: str, result: dict | None) -> list[Node]:
        m = self.models[name]
        m[what], m["error"] = result, m.get("error") or self.stages.error(f"{what}/{name}")
        return self.comparisons() if what == "eval" else []

    def eval_inputs(self) -> dict:
        """An evaluation stage's inputs: the eval settings, and that it keeps every record's prediction."""
        return {**self.cfg.eval.fingerprinted(), "predictions": True}

    def predictions(self, stage: str) -> Path:
        """Where the evaluation stage `stage` keeps its predictions (carried with the run)."""
        return self.work / "predictions" / (stage.replace("/", "__") + ".json.gz")

    def pairs(self) -> list[tuple[str, str]]:
        """(base, other) models compared record by record: each KD student against the CE student of its seed,
        each quantized bundle against the fp32 bundle on its backend."""
        out = [(f"ce/seed{s}", f"{o}/seed{s}") for s in self.cfg.student.seeds for o in OBJECTIVES if o != "ce"]
        return out + [(bundle_key(b, "fp32"), key) for b, scheme, key, _ in self.bundle_list() if scheme != "fp32"]

    def comparisons(self) -> list[Node]:
        """The compare stages whose two evaluations are now both stored (each made once)."""
        nodes = []
        for base, other in self.pairs():
            stages = (f"eval/{base}", f"eval/{other}")
            if other in self.compared_models or not all(n in self.stages.keys for n in stages):
                continue
            self.compared_models.add(other)
            inputs = {"rounds": PAIRED_ROUNDS, "confidence": 0.95, "seed": 0}
            nodes.append(Node(f"compare/{other}", inputs, stages, paired,
                              (self.predictions(stages[0]), self.predictions(stages[1]), *inputs.values()),
                              then=functools.partial(self.compared, base, other)))
        return nodes

    def compared(self, base: str, other: str, result: dict | None) -> list[Node]:
        m = self.models[other]
        m["paired"] = None if result is None else {"base": base, **result}
        m["paired_error"] = self.stages.error(f"compare/{other}")
        return []

    def bundle_list(self) -> list[tuple[str, str, str, Path]]:
        """(backend, scheme, table key, folder) of every bundle: fp32 (one folder, both backends), then each scheme."""
        fp32 = self.work / "bundles" / "fp32"
        return [(b, s, bundle_key(b, s), fp32 if s == "fp32" else self.work / "bundles" / f"{b}-{s}")
                for b in self.cfg.bundles.backends for s in ("fp32", *self.cfg.bundles.schemes)]

    def exported(self, result: dict | None) -> list[Node]:
        """The fp32 bundle's evals and each scheme's quantization through the accuracy guard (skipped, each, where
        the export failed)."""
        nodes, cfg = [], self.cfg.bundles
        for backend, scheme, key, out in self.bundle_list():
            if scheme == "fp32":
                nodes += self.bundle_scores(key, out, backend, "export")
            else:
                stage = f"quantize/{backend}/{scheme}"
                nodes.append(Node(stage, quantize_inputs(cfg, backend, scheme), ("export",), quantize,
                                  (self.work / "bundles" / "fp32", out, backend, scheme, cfg, self.data, self.threads),
                                  then=functools.partial(self.quantized, key, out, backend, stage)))
        return nodes

    def quantized(self, key: str, out: Path, backend: str, stage: str, result: dict | None) -> list[Node]:
        self.models[key]["quantize"] = result
        return self.bundle_scores(key, out, backend, stage)  # skipped where it failed

    def bundle_scores(self, key: str, out: Path, backend: str, made: str) -> list[Node]:
        """A bundle's eval on its backend and, on constrained.backend, the three decoding modes (issue #28 item 4)."""
        nodes = [Node(f"eval/{key}", self.eval_inputs(), (made,), score, (out,),
                      {"backend": backend, **self.score_args(f"eval/{key}")}, functools.partial(self.bundle_scored, key, out, backend))]
        c = self.cfg.constrained
        if backend == c.backend:
            inputs = {**c.model_dump(), "max_new_tokens": self.cfg.eval.max_new_tokens}
            nodes.append(Node(f"constrained/{key}", inputs, (made,), constrained,
                              (out, c.backend, Path(self.data["test"]), c.limit, self.cfg.eval.max_new_tokens, self.threads),
                              then=functools.partial(self.decoded, key)))
        return nodes

    def bundle_scored(self, key: str, out: Path, backend: str, result: dict | None) -> list[Node]:
        m = self.models[key]
        m["eval"] = result
        if result:
            m["bundle_bytes"] = bundle_bytes(out, backend)
        return self.comparisons()

    def decoded(self, key: str, result: dict | None) -> list[Node]:
        m = self.models[key]
        m["constrained"], m["constrained_error"] = result, self.stages.error(f"constrained/{key}")
        return []

    def score_args(self, stage: str) -> dict:
        e = self.cfg.eval
        return {"test": Path(self.data["test"]), "root": Path(self.data["root"]), "limit": e.limit,
                "max_new_tokens": e.max_new_tokens, "protocol": e.protocol, "num_beams": e.num_beams, "threads": self.threads,
                "batch_size": e.batch_size, "predictions": self.predictions(stage)}

    def flow(self, nodes: list[Node]) -> None:
        """Run the nodes and the nodes their results lead to, each once the stages it reads are stored. A stored
        stage is taken at once. With --jobs N the others run in N child processes, each started as soon as a process
        is free, by kind (STAGE_ORDER: training first, so the longest runs start early), then in the order they
        became ready; their results are recorded here as they finish (a stage's seconds are its own wall time in the
        child). So a student's finish stage, evaluation and probe start when its own training ends, not after every
        student's. Without a pool they run here, one at a time, in the same order."""
        import heapq
        import itertools
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        queue, running, count = [], {}, itertools.count()

        def add(new: list[Node]) -> None:
            for node in new:
                heapq.heappush(queue, (STAGE_ORDER.index(node.name.split("/")[0]), next(count), node))

        def record(node: Node, fn, timed: bool = False) -> None:
            result = self.stages.run(node.name, node.inputs, fn, needs=node.needs, timed=timed)
            add(node.then(result) if node.then else [])

        add(nodes)
        while queue:  # a fresh pool each time round: a child that crashed (OOM, a segfault) breaks its pool
            with children(self.jobs) as pool:
                broken = False
                while (queue and not broken) or running:
                    later = []
                    while queue:
                        item = heapq.heappop(queue)
                        node, kwargs = item[-1], item[-1].kwargs or {}
                        if (pool is None or any(n not in self.stages.keys for n in node.needs)  # recorded as skipped
                                or self.stages.stored(node.name, node.inputs, node.needs)):
                            record(node, functools.partial(node.fn, *node.args, **kwargs))
                        elif len(running) < self.jobs and not broken:
                            try:
                                running[pool.submit(timed, node.fn, *node.args, **kwargs)] = node
                            except BrokenProcessPool:  # its running stages fail below; this one waits for the next pool
                                broken = True
                                later.append(item)
                                continue
                            print(f"[{node.name}] ... (in a child process)", flush=True)
                        else:
                            later.append(item)
                    for item in later:
                        heapq.heappush(queue, item)
                    if running:
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in [f for f in running if f in done]:  # in the order they started
                            broken = broken or isinstance(future.exception(), BrokenProcessPool)
                            record(running.pop(future), future.result, timed=True)


def stop(signum, frame) -> None:
    """SIGTERM outside a training run: stop where the main process is (the stage it was in is not stored)."""
    raise Terminated("SIGTERM")


# ---- main ----------------------------------------------------------------------------------------------
def write(results: dict, out: Path) -> dict:
    """Write the results JSON (targets checked, load average at the end) and its markdown; returns what was written."""
    results = finite({**results, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "targets": targets(results)})
    write_result(out, results)
    out.with_suffix(".md").write_text(render(results))
    print(f"wrote {out.with_suffix('.md')}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=HERE / "recipes" / "fidelity.yaml", help="the benchmark's YAML")
    ap.add_argument("--work", type=Path, help="stages and models (default: benchmarks/work/fidelity[_quick])")
    ap.add_argument("--quick", action="store_true", help="tiny data, steps and eval: a plumbing check")
    ap.add_argument("--fresh", action="store_true", help="forget the finished stages in --work and start over")
    ap.add_argument("--render", action="store_true", help="only check the targets again and rewrite the .md from the existing JSON")
    ap.add_argument("--jobs", type=int, default=1,
                    help="students trained, bundles quantized and models scored, this many at a time in their own processes "
                         "(with OMP_NUM_THREADS=1: up to one per core)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
                    help="torch and backend intra-op threads (default: OMP_NUM_THREADS, else the libraries' own)")
    args = ap.parse_args()
    out = RESULTS / ("fidelity_quick.json" if args.quick else "fidelity.json")
    if args.render:
        if not out.is_file():
            sys.exit(f"{out}: not found; run benchmarks/fidelity.py{' --quick' if args.quick else ''} first")
        results = json.loads(out.read_text())
        results["targets"] = targets(results)  # checked again: the checks may have changed since the run
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(results))
        print(f"wrote {out} (targets) and {out.with_suffix('.md')}")
        return
    work = (args.work or HERE / "work" / ("fidelity_quick" if args.quick else "fidelity")).resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.quick:  # a run carried from another machine (fidelity_carry.py save) goes on from where it was
        from fidelity_carry import CARRY, restore

        for line in restore(CARRY, work):
            print(f"[carry] {line}", flush=True)
    cfg = load_config(args.config, args.quick)
    import torch
    from runtime_cpu import machine

    if args.threads:
        torch.set_num_threads(args.threads)
    sha = commit()
    results = {"command": "python benchmarks/fidelity.py " + " ".join(sys.argv[1:]), "commit": sha.removesuffix("-dirty"),
               "dirty": sha.endswith("-dirty"), "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": {**machine(), "torch_threads": torch.get_num_threads(),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
               "config": cfg.model_dump()}
    run = Run(cfg, work, args.quick, args.threads, args.jobs)  # recipes and protocols checked: nothing written yet
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, stop)  # a training run puts its own handler in while it trains
    try:
        run(results)
    except (Terminated, KeyboardInterrupt) as err:  # the finished stages are stored; the results JSON is left as it was
        sys.stderr.write(f"fidelity.py: stopped ({one_line(err) or 'Ctrl-C'}); finished stages are kept under {work}, "
                         "a rerun goes on from them\n")
        sys.exit(143 if isinstance(err, Terminated) else 130)
    except BaseException:
        results["seconds"] = time.perf_counter() - t0
        write(results, out)
        raise
    results["seconds"] = time.perf_counter() - t0
    results = write(results, out)
    print(render(results))
    failed = [f"{name}: {s['error']}" for name, s in results["stages"].items() if s["status"] == "error"]
    if failed:
        sys.exit(f"{len(failed)} stages failed (their columns say error; a rerun retries them):\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
