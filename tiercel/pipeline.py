"""`tiercel pipeline RECIPE`: data -> teacher -> distill -> export -> quantize -> eval -> profile -> report.

Every stage writes its outputs under the recipe's `out` directory and, when it has finished, a marker
`stages/<stage>.json` with its summary. A stage whose marker exists is skipped, so a pipeline that crashed
picks up at the stage that was running (distillation itself resumes from its newest checkpoint);
`--from STAGE` forgets that stage's marker and every later one. Knows the stage order and where outputs
go; the work is done by the stage packages.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tiercel import progress
from tiercel.errors import ConfigError
from tiercel.fileio import atomic_dir, atomic_write_text, check_output_dir, write_json
from tiercel.recipe import Recipe, dump_recipe

STAGES = ("data", "teacher", "distill", "export", "quantize", "eval", "profile", "report")


class Pipeline:
    """A recipe's stages and where their outputs live."""

    def __init__(self, recipe: Recipe, log=print):
        self.recipe, self.out, self.log = recipe, Path(recipe.out), log
        self.markers = self.out / "stages"

    def stages(self) -> dict:
        """The stages in the order they run: name -> the method that runs it (STAGES lists the names)."""
        return {"data": self.stage_data, "teacher": self.stage_teacher, "distill": self.stage_distill,
                "export": self.stage_export, "quantize": self.stage_quantize, "eval": self.stage_eval,
                "profile": self.stage_profile, "report": self.stage_report}

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def done(self, stage: str) -> dict | None:
        marker = self.markers / f"{stage}.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def forget_from(self, stage: str) -> None:
        """Remove the markers of `stage` (checked by pending) and of every later stage."""
        for later in STAGES[STAGES.index(stage):]:
            (self.markers / f"{later}.json").unlink(missing_ok=True)

    def pending(self, from_stage: str | None = None) -> list[str]:
        """The stages a run will do: those without a marker, and `from_stage` with every later one."""
        if from_stage and from_stage not in STAGES:
            raise ConfigError(f"--from: unknown stage '{from_stage}'; stages: {', '.join(STAGES)}")
        first = STAGES.index(from_stage) if from_stage else len(STAGES)
        return [s for i, s in enumerate(STAGES) if i >= first or self.done(s) is None]

    def check_inputs(self, pending: list[str]) -> None:
        """Refuse before the first stage what a later one would fail on: data files and the image root (unless
        pipeline.synth is about to write them), the split the report scores, fp16 off CUDA for distillation."""
        import torch

        from tiercel.distill.setup import data_problems, precision_problems

        r, d = self.recipe, self.recipe.data
        problems = []
        if r.pipeline.synth is None or Path(d.train).is_file():
            problems += data_problems(d, ("train", "val", "test"))
        if "eval" in pending and getattr(d, r.eval.split) is None:
            problems.append(f"data.{r.eval.split}: not set; the report scores the {r.eval.split} split (eval.split)")
        if "distill" in pending:
            problems += precision_problems(r, "cuda" if torch.cuda.is_available() else "cpu")
        if problems:
            raise ConfigError("recipe: " + "; ".join(problems))

    def run(self, from_stage: str | None = None) -> dict:
        self.check_inputs(self.pending(from_stage))
        if from_stage:
            self.forget_from(from_stage)
        self.check_replaceable()
        check_output_dir(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "recipe.resolved.yaml", dump_recipe(self.recipe))
        results = {}
        for stage in STAGES:
            prior = self.done(stage)
            if prior is not None:
                self.log(f"[{stage}] done earlier, skipped")
                results[stage] = prior
                continue
            self.log(f"[{stage}] ...")
            t0 = time.perf_counter()
            with progress.scope(stage):  # the stage's bars read [distill] ..., [quantize/int8-static/guard] ...
                summary = self.stages()[stage](results) or {}
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            write_json(self.markers / f"{stage}.json", summary)
            results[stage] = summary
            self.log(f"[{stage}] finished in {summary['seconds']:.1f} s")
        return results

    def check_replaceable(self) -> None:
        """Before any work: ConfigError if a stage still to run would replace a folder tiercel did not write
        (the synthetic benchmark's data.root, the trained teacher's teacher.path)."""
        self._check_out()
        if self.done("data") is None:
            self._check_data_root()
        if self.done("teacher") is None:
            self._check_teacher_path()

    def _check_out(self) -> None:
        """The run writes its files (report.md, profile.json, bundles/, ...) into `out`: refuse a folder that holds
        files tiercel did not write unless it is an earlier run's (its stages/ markers). Tiercel's own outputs in it
        (a synthetic benchmark, a checkpoint or bundle by its marker) and recipe files may stand there."""
        from tiercel.data.synth.writer import is_synth_folder
        from tiercel.fileio import few, marker_is_ours
        from tiercel.recipes import is_recipe

        if not self.out.is_dir() or any(self.markers.glob("*.json")):
            return

        def ours(entry: Path) -> bool:
            if entry.name == "recipe.resolved.yaml" or (entry.name == "stages" and entry.is_dir()):
                return True
            if entry.is_dir():
                return (is_synth_folder(entry) or marker_is_ours(entry / "tiercel.json")
                        or marker_is_ours(entry / "manifest.json"))
            return entry.suffix in (".yaml", ".yml") and is_recipe(entry)

        foreign = sorted(e.name for e in self.out.iterdir() if not ours(e))
        if foreign:
            raise ConfigError(f"out ({self.out}): holds files tiercel did not write ({few(foreign)}) and no earlier run of "
                              "this pipeline, whose files would replace them; choose a new folder for --out")

    def _check_data_root(self) -> None:
        from tiercel.data.synth.writer import is_synth_folder

        d = self.recipe.data
        if self.recipe.pipeline.synth is None or Path(d.train).is_file():
            return
        if _holds_files(d.root) and not is_synth_folder(d.root):
            raise ConfigError(f"{d.train}: training file not found, and pipeline.synth would generate into data.root "
                              f"({d.root}), which holds files tiercel did not write; point data.train at your "
                              "training file, or set data.root to a new folder for the synthetic benchmark")

    def _check_teacher_path(self) -> None:
        dst = self.recipe.teacher.path
        if self.recipe.pipeline.train_teacher is None or dst is None:
            return
        from tiercel.fileio import marker_is_ours, marker_note

        if _holds_files(dst) and not marker_is_ours(Path(dst) / "tiercel.json"):
            raise ConfigError(f"teacher.path ({dst}): holds files tiercel did not write ({marker_note(Path(dst) / 'tiercel.json')}), and "
                              "pipeline.train_teacher would replace them with the teacher it trains; set teacher.path "
                              "to a new folder for the trained teacher, or remove pipeline.train_teacher")

    # ---- paths -------------------------------------------------------------------------------------------
    def bundle(self, name: str) -> Path:
        return self.out / "bundles" / name

    def models(self) -> dict[str, Path]:
        """Report rows: label -> bundle directory."""
        rows = {}
        if self.recipe.teacher.kind == "checkpoint":
            rows["teacher"] = self.bundle("teacher-fp32")
        rows["student"] = self.bundle("student-fp32")
        failed = (self.done("quantize") or {}).get("failed", {})
        for scheme in self.recipe.quantize.schemes:
            if scheme not in failed:  # a scheme the accuracy guard refused has no bundle to score
                rows[f"student-{scheme}"] = self.bundle(f"student-{scheme}")
        return rows

    def backend_of(self, label: str) -> str:
        """The runtime backend a report row runs on: its quantization backend's, else onnxruntime."""
        if label.startswith("student-") and label != "student-fp32":
            return self.recipe.quantize.target.runs
        return "onnxruntime"

    # ---- stages ------------------------------------------------------------------------------------------
    def stage_data(self, _):
        d, synth = self.recipe.data, self.recipe.pipeline.synth
        if Path(d.train).is_file():
            return {"train": str(d.train), "generated": False}
        if synth is None:
            raise ConfigError(f"{d.train}: training file not found (set pipeline.synth to generate the synthetic benchmark)")
        from tiercel.data.synth import generate

        self._check_data_root()
        meta = generate(d.root, n=synth.n, size=synth.size, seed=synth.seed, overwrite=True)
        if not Path(d.train).is_file():
            raise ConfigError(f"{d.train}: pipeline.synth writes train.json/val.json/test.json into data.root ({d.root}); point data.train there")
        return {"train": str(d.train), "generated": True, "records": meta.get("records", synth.n)}

    def stage_teacher(self, _):
        spec = self.recipe.pipeline.train_teacher
        if spec is None:
            return {"trained": False, "path": str(self.recipe.teacher.path) if self.recipe.teacher.path else None}
        from tiercel.distill.trainer import distill
        from tiercel.recipe import parse_recipe

        run_dir = self.out / "teacher_run"
        data = self.recipe.data.model_dump(mode="json")
        recipe = parse_recipe({
            "name": f"{self.recipe.name}-teacher", "out": str(run_dir), "seed": self.recipe.seed, "data": data,
            "tokenizer": {"source": "train", "vocab_size": spec.vocab_size},
            "student": {"preset": spec.preset, "overrides": spec.overrides, "coord_init": spec.coord_init},
            "distill": {"steps": spec.steps, "batch_size": spec.batch_size, "lr": spec.lr, "dense": spec.dense.model_dump(),
                        "warmup_steps": max(1, spec.steps // 20) if spec.warmup_steps is None else spec.warmup_steps,
                        "save_every": max(1, spec.steps // 2), "log_every": max(1, spec.steps // 20),
                        "eval_limit": self.recipe.distill.eval_limit},
        }, "pipeline.train_teacher")
        self._check_teacher_path()
        dst = Path(self.recipe.teacher.path)
        summary = distill(recipe, resume=(run_dir / "checkpoints" / "latest").is_file(), progress=True)
        with atomic_dir(dst, overwrite=True) as tmp:
            for f in summary.student.iterdir():
                shutil.copy2(f, tmp / f.name)
        from tiercel.evaluate.core import open_predictor, prompt_check

        # a teacher that answers every task prompt alike teaches the student little (docs/recipes.md, the teacher check)
        check = prompt_check(open_predictor(dst), self.recipe.data.val or self.recipe.data.train, self.recipe.data.root)
        if check["warning"]:
            check["warning"] = (f"the teacher {check['warning']}; train it again with a longer "
                                "pipeline.train_teacher.warmup_steps or a lower lr")
            self.log(f"[teacher] warning: {check['warning']}")
        from tiercel.evaluate.image_use import image_check
        from tiercel.models import load_checkpoint

        # a teacher whose answers do not depend on the image teaches the student to ignore it too (docs/fidelity.md);
        # on the val records, or the train records when no task has two val records to swap images between
        d = self.recipe.data
        images = image_check(load_checkpoint(dst), [f for f in (d.val, d.train) if f is not None], d.root)
        if images["warning"]:
            images["warning"] = (f"the teacher's {images['warning']}; see docs/fidelity.md for what makes a new model "
                                 "read its images (pipeline.train_teacher.coord_init, dense)")
            self.log(f"[teacher] warning: {images['warning']}")
        return {"trained": True, "path": str(dst), "val": summary.val, "prompt_check": check, "image_check": images}

    def stage_distill(self, _):
        from tiercel.distill.checkpoints import latest
        from tiercel.distill.trainer import distill

        summary = distill(self.recipe, resume=latest(self.out) is not None, progress=True)
        return summary.model_dump(mode="json", include={"student", "val", "resumed_from"})

    def stage_export(self, _):
        from tiercel.export.bundle import export_checkpoint

        e = self.recipe.export
        made = {}
        sources = {"student-fp32": self.out / "student"}
        if self.recipe.teacher.kind == "checkpoint":
            sources["teacher-fp32"] = Path(self.recipe.teacher.path)
        for name, ckpt in sources.items():
            with progress.scope(name):
                made[name] = str(export_checkpoint(ckpt, self.bundle(name), backends=tuple(e.backends), decoder=e.decoder, overwrite=True))
        return {"bundles": made}

    def stage_quantize(self, _):
        from tiercel.quantize.bundle import quantize_bundle
        from tiercel.quantize.guard import GuardError

        q, d = self.recipe.quantize, self.recipe.data
        made, failed = {}, {}
        for scheme in q.schemes:
            try:
                with progress.scope(scheme):
                    section = quantize_bundle(self.bundle("student-fp32"), self.bundle(f"student-{scheme}"),
                                              calib=d.train, root=d.root, val=d.val, settings=q.settings(scheme),
                                              overwrite=True, log=self.log)
            except GuardError as err:  # one scheme missing the floor does not throw away the rest of the run
                self.log(f"quantize {scheme}: {err}")
                failed[scheme] = str(err)
                continue
            made[scheme] = {"bundle": str(self.bundle(f"student-{scheme}")), "guard": section.guard.model_dump() if section.guard else None}
        return {"bundles": made, "failed": failed}

    def stage_eval(self, _):
        from tiercel.evaluate import evaluate
        from tiercel.evaluate.core import open_predictor

        ev, d = self.recipe.eval, self.recipe.data
        split = d.test if ev.split == "test" else d.val
        if split is None:
            raise ConfigError(f"data.{ev.split}: not set; the report scores the {ev.split} split")
        scores = {}
        for label, bundle in self.models().items():
            with progress.scope(label):
                report = evaluate(open_predictor(bundle, self.backend_of(label)), split, d.root, limit=ev.limit,
                                  generation={"num_beams": ev.num_beams, "max_new_tokens": ev.max_new_tokens},
                                  protocol=ev.protocol, keep_predictions=True)  # the report compares them paired
            scores[label] = report.to_dict()
            write_json(self.out / "eval" / f"{label}.json", scores[label])
        return {"models": {k: v.get("average_headline") for k, v in scores.items()}}

    def stage_profile(self, _):
        from tiercel.models.open import CHECKPOINTS
        from tiercel.runtime.profile import report as preport
        from tiercel.runtime.profile.runner import ProfileSettings, profile

        p = self.recipe.profile
        image_size = self.recipe.pipeline.synth.size if self.recipe.pipeline.synth else 768
        settings = ProfileSettings(runs=p.runs, warmup=p.warmup, new_tokens=p.new_tokens, tasks=tuple(p.tasks), image_size=image_size)
        rows = self.models()
        result = profile([b for k, b in rows.items() if self.backend_of(k) == "onnxruntime"], ("onnxruntime",), settings,
                         checkpoints=CHECKPOINTS)
        write_json(self.out / "profile.json", result.to_dict())
        preport.plot(result, self.out / "profile.png")
        if "openvino" in self.recipe.export.backends:
            ov_rows = [self.bundle("student-fp32")] + [b for k, b in rows.items() if self.backend_of(k) == "openvino"]
            ov = profile(ov_rows, ("openvino",), settings)
            write_json(self.out / "profile_openvino.json", ov.to_dict())
        return {"profile": str(self.out / "profile.json"), "plot": str(self.out / "profile.png")}

    def stage_report(self, results):
        from tiercel.report import write_report

        paths = write_report(self)
        return {k: str(v) for k, v in paths.items()}


def _holds_files(folder) -> bool:
    return Path(folder).is_dir() and any(Path(folder).iterdir())


def relocate(recipe: Recipe, out: str | Path) -> Recipe:
    """`recipe` with every output of its pipeline under `out`: the run itself, the synthetic benchmark it
    generates (pipeline.synth) and the teacher it trains (pipeline.train_teacher). Inputs stay put, among them
    generated teacher answers, whose default place is under the old `out`."""
    data = Path(out) / "data"
    changes = {"out": Path(out)}
    if recipe.teacher.kind == "generated" and recipe.teacher.answers is None:
        from tiercel.distill.answers import answers_path

        changes["teacher"] = recipe.teacher.model_copy(update={"answers": answers_path(recipe)})
    if recipe.pipeline.synth is not None:
        moved = {"root": data, "train": data / "train.json", "val": data / "val.json", "test": data / "test.json"}
        changes["data"] = recipe.data.model_copy(update=moved)
    if recipe.pipeline.train_teacher is not None:
        changes["teacher"] = changes.get("teacher", recipe.teacher).model_copy(update={"path": Path(out) / "teacher"})
    return recipe.model_copy(update=changes)


def run_pipeline(recipe: Recipe, from_stage: str | None = None, log=print) -> dict:
    """Run (or resume) every stage of `recipe`; returns each stage's summary."""
    return Pipeline(recipe, log).run(from_stage)
