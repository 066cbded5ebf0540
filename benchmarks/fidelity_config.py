"""The YAML of benchmarks/fidelity.py (benchmarks/recipes/fidelity.yaml) and the tiercel recipes made from it.

The schema says what each section holds; the recipe fragments in it (teacher, student.recipe, the objectives) are
merged over what fidelity.py fills in (name, out, data paths, the teacher for the students) and validated by
tiercel.recipe. --quick caps (QUICK) are applied here too. Knows nothing about running the stages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from fidelity_report import BACKENDS, MAX_DROP, OBJECTIVES
from pydantic import BaseModel, ConfigDict, Field, field_validator

QUICK = {"n": 280, "steps": 4, "eval_limit": 2, "max_new_tokens": 16, "probe_n": 4, "calib_n": 4, "n_val": 14}


# ---- the YAML ------------------------------------------------------------------------------------------
class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Spec):
    n: int = Field(6000, ge=42, description="records over the train/val/test splits (about 80/10/10)")
    size: int = Field(256, ge=64, description="image side in pixels as generated (models resize to their image_size)")
    seed: int = Field(0, description="generator seed")
    knobs: dict = Field(default_factory=dict, description="tiercel.data.synth.knobs.Knobs fields to change; {}: the defaults")

    @field_validator("knobs")
    @classmethod
    def _known(cls, knobs):
        from dataclasses import fields

        from tiercel.data.synth.knobs import Knobs

        names = [f.name for f in fields(Knobs)]
        for k in knobs:
            if k not in names:
                raise ValueError(f"unknown knob '{k}'; knobs: {', '.join(names)}")
        return knobs


class StudentSpec(Spec):
    seeds: list[int] = Field([0, 1], min_length=1, description="one run per objective per seed (recipe `seed`)")
    recipe: dict = Field(default_factory=dict, description="recipe fragment of every student (shape, data, distill)")
    objectives: dict[str, dict] = Field(description="ce, kd, kd_hidden: recipe fragments merged over `recipe`")
    finish: dict | None = Field(None, description="a last stage of every student, started from the student its recipe "
                                "trained: a recipe fragment merged over that recipe; null: none")

    @field_validator("objectives")
    @classmethod
    def _columns(cls, objectives):
        if set(objectives) != set(OBJECTIVES):
            raise ValueError(f"needs exactly {', '.join(OBJECTIVES)} (got {', '.join(objectives)})")
        return objectives


class BundleSpec(Spec):
    source: Literal["ce", "kd", "kd_hidden"] = Field("kd_hidden", description="the student objective whose first-seed "
                                                      "run is exported and quantized")
    backends: list[Literal["onnxruntime", "openvino"]] = Field(list(BACKENDS), description="quantization and runtime backends")
    schemes: list[Literal["int8-static", "int8-dynamic", "int8-weight-only", "int4-weight-only"]] = Field(list(MAX_DROP), description="quantization schemes")
    quantize: dict = Field(default_factory=dict, description="tiercel.quantize.settings.QuantizeOptions fields (not backend)")
    max_drop: dict[str, float] = Field(dict(MAX_DROP), description="accuracy guard per scheme: largest relative val drop")


class EvalSpec(Spec):
    limit: int | None = Field(None, gt=0, description="test records per task; null: all of them")
    max_new_tokens: int = Field(128, gt=0, description="generation cap")
    num_beams: int = Field(1, gt=0, description="1: greedy")
    protocol: Literal["tiercel", "falcon", "both"] = Field("both", description="tiercel's metrics, Falcon's, or both")
    batch_size: int = Field(64, gt=0, description="records decoded together (tiercel.evaluate's run_batch); not in "
                            "the stages' fingerprints: predictions do not depend on it (int8-dynamic's do, slightly)")

    def fingerprinted(self) -> dict:
        """The settings an evaluation stage's result depends on (its fingerprint's inputs)."""
        return self.model_dump(exclude={"batch_size"})


class ConstrainedSpec(Spec):
    limit: int = Field(20, gt=0, description="test records per task, each decoded three ways (issue #28, item 4)")
    backend: Literal["onnxruntime", "openvino"] = Field("onnxruntime", description="the bundles compared")


class ProbeSpec(Spec):
    n: int = Field(64, gt=1, description="test records per task (the first n in file order)")
    batch_size: int = Field(8, gt=1, description="records per batch; images are rolled within a batch")


class Config(Spec):
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: dict = Field(description="recipe fragment, or {stages: [fragment, ...]}")
    student: StudentSpec
    bundles: BundleSpec = Field(default_factory=BundleSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    constrained: ConstrainedSpec = Field(default_factory=ConstrainedSpec)

    @field_validator("teacher")
    @classmethod
    def _stages(cls, teacher):
        stages = teacher.get("stages", [teacher])
        if not (isinstance(stages, list) and stages and all(isinstance(f, dict) for f in stages)):
            raise ValueError("stages: must be a non-empty list of recipe fragments")
        return teacher


def load_config(path: Path, quick: bool) -> Config:
    from pydantic import ValidationError

    if not path.is_file():
        sys.exit(f"{path}: not found; give the benchmark's YAML with --config (benchmarks/recipes/fidelity.yaml)")
    try:
        cfg = Config.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        sys.exit(f"{path}: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    if quick:
        cfg.data.n = min(cfg.data.n, QUICK["n"])
        cfg.eval.limit, cfg.eval.max_new_tokens = QUICK["eval_limit"], QUICK["max_new_tokens"]
        cfg.probe.n, cfg.probe.batch_size = QUICK["probe_n"], QUICK["probe_n"]
        cfg.constrained.limit = QUICK["eval_limit"]
        cfg.bundles.quantize = {**cfg.bundles.quantize, "n": QUICK["calib_n"], "n_val": QUICK["n_val"],
                                "max_new_tokens": QUICK["max_new_tokens"]}
    return cfg


# ---- recipes -------------------------------------------------------------------------------------------
def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def capped(recipe: dict, quick: bool) -> dict:
    """With --quick: a few steps, validation on a few records, no compile (the plumbing, not the training)."""
    if not quick:
        return recipe
    d = recipe.get("distill", {})
    steps = min(d.get("steps", 1000), QUICK["steps"])
    d = {**d, "steps": steps, "warmup_steps": min(d.get("warmup_steps", 0), steps), "save_every": steps, "log_every": 1,
         "eval_every": 0, "eval_limit": QUICK["eval_limit"], "compile": False}
    return {**recipe, "distill": d}


def teacher_stages(cfg: Config) -> list[dict]:
    """The teacher's recipe fragments, one per stage (`teacher: {stages: [...]}`, or one fragment: one stage)."""
    return cfg.teacher["stages"] if "stages" in cfg.teacher else [cfg.teacher]


def teacher_recipes(cfg: Config, work: Path, data: dict, quick: bool) -> list[dict]:
    """The teacher's recipe per stage; a stage after the first starts from the one before (its checkpoint and
    tokenizer) unless its fragment says otherwise. The first stage trains into <work>/teacher whether or not stages
    follow, the N-th into <work>/teacher_stageN, so a stage added after a finished run reuses what it trained."""
    fragments = teacher_stages(cfg)
    recipes = []
    for i, fragment in enumerate(fragments):
        out = work / "teacher" if i == 0 else work / f"teacher_stage{i + 1}"
        base = {"name": f"fidelity-teacher-{i + 1}", "out": str(out), "data": data}
        if recipes:
            prev = Path(recipes[-1]["out"]) / "student"
            base |= {"student": {"init": "checkpoint", "checkpoint": str(prev)},
                     "tokenizer": {"source": "file", "path": str(prev / "tokenizer.json")}}
        recipes.append(capped(merge(base, fragment), quick))
    return recipes


def data_paths(folder: Path) -> dict:
    """The recipe `data:` paths of a synthetic benchmark folder (`tiercel data synth` / the data stage)."""
    return {k: str(folder / f"{k}.json") for k in ("train", "val", "test")} | {"root": str(folder),
                                                                              "objects": str(folder / "objects.json")}


def student_recipe(cfg: Config, work: Path, data: dict, teacher: Path, objective: str, seed: int, quick: bool) -> dict:
    """A student's recipe: the teacher's tokenizer (so every objective sees the same ids) and the teacher as a
    live checkpoint, under `student.recipe`, under the objective's fragment."""
    base = {"name": f"fidelity-{objective}-seed{seed}", "out": str(work / "students" / objective / f"seed{seed}"),
            "seed": seed, "data": data, "teacher": {"kind": "checkpoint", "path": str(teacher)},
            "tokenizer": {"source": "file", "path": str(teacher / "tokenizer.json")}}
    recipe = merge(merge(base, cfg.student.recipe), cfg.student.objectives[objective])
    if recipe["teacher"].get("kind") == "none":
        recipe["teacher"] = {k: v for k, v in recipe["teacher"].items() if k != "path"}
    return capped(recipe, quick)


def finish_recipe(cfg: Config, first: dict, quick: bool) -> dict | None:
    """The last stage of the student `first` trains (student.finish), or None: `student.finish` merged over `first`,
    started from its student (weights, and heads where saved; the tokenizer as before), into <first's out>_finish."""
    if cfg.student.finish is None:
        return None
    prev = Path(first["out"]) / "student"
    base = {**first, "name": f"{first['name']}-finish", "out": f"{first['out']}_finish",
            "student": {**first.get("student", {}), "init": "checkpoint", "checkpoint": str(prev)}}
    return capped(merge(base, cfg.student.finish), quick)


def check_recipes(recipes: list[dict]) -> None:
    """Every recipe validated before any work (tiercel.recipe: one line per recipe with every error)."""
    from tiercel.errors import ConfigError
    from tiercel.recipe import parse_recipe

    problems = []
    for r in recipes:
        try:
            parse_recipe(r, r["name"])
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        sys.exit("\n".join(problems))


def quantize_settings(cfg: BundleSpec, backend: str, scheme: str):
    """tiercel's QuantizeSettings of one quantized bundle (the YAML's settings, the scheme's max_drop)."""
    from tiercel.quantize.settings import QuantizeSettings

    max_drop = cfg.max_drop.get(scheme, MAX_DROP[scheme])
    return QuantizeSettings(**{**cfg.quantize, "backend": backend, "scheme": scheme, "max_drop": max_drop})


def quantize_inputs(cfg: BundleSpec, backend: str, scheme: str) -> dict:
    """The settings a quantize stage's result depends on (its fingerprint's inputs): all_layers only under int4,
    n_val_max only where it lets the guard grow its sample (so settings added later at their no-op values keep the
    stored stages)."""
    s = quantize_settings(cfg, backend, scheme)
    idle = {"all_layers"} if scheme != "int4-weight-only" else set()
    idle |= {"n_val_max"} if s.n_val_max <= s.n_val else set()
    return s.model_dump(exclude=idle)


