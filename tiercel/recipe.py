"""The recipe: one YAML file describes a whole job; each stage reads its own section.

Validation reports every error at once, each with its field path, in one line:
`recipe.yaml: distill.temperature: must be > 0 (got -1); student.preset: ...`. The resolved recipe (defaults
filled in) is written next to every output. This module knows the schema only, not how stages run.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiercel import recipes
from tiercel.distill.kinds import TEACHER_KINDS, TeacherKind
from tiercel.errors import ConfigError, choose
from tiercel.quantize.schemes import has_int4
from tiercel.quantize.settings import QuantizeOptions, QuantizeSettings, known_scheme, named

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]


def _known_tag(tag: str) -> str:
    from tiercel.tasks import TAGS

    if tag not in TAGS:
        raise ValueError(f"unknown task tag '{tag}'; valid: {', '.join(TAGS)}")
    return tag


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # nan/inf: never meant

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value, info):
        """`steps: true` (or `--set distill.steps=true`) would be read as 1 step: a number takes numbers, also
        inside a list or a mapping of numbers."""
        if _bool_for_number(value, cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


def _bool_for_number(value, annotation) -> bool:
    """Whether `value` holds a bool where `annotation` (through Annotated, unions with None, list, tuple and
    dict) wants an int or a float and no bool."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _bool_for_number(value, args[0])
    if origin in (typing.Union, types.UnionType):  # `bool | int` takes true; `int | None` and `list[int] | None` do not
        return not (isinstance(value, bool) and bool in args) and any(_bool_for_number(value, a) for a in args)
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        return any(_bool_for_number(v, args[0]) for v in value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(_bool_for_number(v, args[1]) for v in value.values())
    return isinstance(value, bool) and annotation in (int, float)


class DataSection(Section):
    train: Path = Field(description="Falcon_SFT training file (JSON list or JSONL)")
    val: Path | None = Field(None, description="validation file, evaluated every distill.eval_every steps")
    test: Path | None = Field(None, description="test file, used by eval and the pipeline report")
    root: Path = Field(Path("."), description="directory image paths in the files are relative to")
    task_weights: dict[str, float] = Field(default_factory=dict, description="sampling weight per task tag; missing tags weigh 1, 0 drops a task")
    max_answer_tokens: int = Field(256, gt=0, description="answers are truncated to this many tokens")
    max_prompt_tokens: int = Field(96, gt=0, description="prompts are truncated to this many tokens (image tokens not counted)")
    cut_answers: Literal["tokens", "structures"] = Field("tokens", description="an answer longer than max_answer_tokens is cut there (tokens), or after its last whole </box>, </quad> or </poly> that fits (structures: the model learns to end between structures, not inside one); either way eos follows")
    quad_order: Literal["keep", "canonical"] = Field("keep", description="corner order of the <quad>s in training answers: as written (keep), or clockwise from the corner nearest the box's top-left (canonical; docs/fidelity.md). Metrics do not depend on it")
    objects: Path | None = Field(None, description="per-image labelled shapes for distill.dense.objects (format in docs/distill.md; tiercel data synth writes objects.json)")

    @field_validator("task_weights")
    @classmethod
    def _tags_known(cls, weights):
        for tag, w in weights.items():
            _known_tag(tag)
            if w < 0:
                raise ValueError(f"weight of {tag} must be >= 0 (got {w})")
        return weights


class TeacherSection(Section):
    kind: str = Field("none", description="; ".join(f"{k.name}: {k.help}" for k in TEACHER_KINDS.values()))
    path: Path | None = Field(None, description="teacher checkpoint directory (checkpoint, cached) or model directory (generated)")
    cache: Path | None = Field(None, description="top-k logit cache directory (cached; written by cache-teacher)")
    top_k: int = Field(32, gt=0, description="logits kept per answer token in the cache")
    adapter: Literal["florence", "geochat"] = Field("florence", description="generated: how to run the teacher")
    answers: Path | None = Field(None, description="generated: where the teacher's answers are written (Falcon_SFT)")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind):
        return choose("teacher kind", kind, TEACHER_KINDS)

    @property
    def spec(self) -> TeacherKind:
        return TEACHER_KINDS[self.kind]

    @model_validator(mode="after")
    def _needs(self):
        if self.spec.needs_path and self.path is None:
            raise ValueError(f"teacher.kind {self.kind} needs teacher.path")
        if self.spec.needs_cache and self.cache is None:
            raise ValueError(f"teacher.kind {self.kind} needs teacher.cache (and teacher.path to build it)")
        return self


class StudentSection(Section):
    init: Literal["preset", "checkpoint", "teacher"] = Field("preset", description="random from a preset, a checkpoint, or layers selected from the teacher")
    preset: str = Field("tiercel-small", description="model preset (see `tiercel info`) for init preset/teacher")
    overrides: dict = Field(default_factory=dict, description="ModelShape fields replacing the preset's, e.g. {d_model: 256}")
    dropout: float = Field(0.1, ge=0, lt=1, description="text dropout and vision stochastic depth of a new student")
    coord_init: Literal["random", "sinusoid"] = Field("random", description="init preset: embeddings of the coordinate tokens <0>..<999>, random or a smooth code of the bin (docs/fidelity.md)")
    checkpoint: Path | None = Field(None, description="init checkpoint: the starting student")
    heads: Literal["checkpoint", "fresh"] = Field("checkpoint", description="init checkpoint: start distill.hidden's projections and distill.dense's heads from the training_heads.safetensors tiercel saved beside the student, where they fit (checkpoint), or from new random weights (fresh)")
    encoder_layers: list[int] | None = Field(None, description="init teacher: teacher encoder layers copied, in order (default: evenly spaced)")
    decoder_layers: list[int] | None = Field(None, description="init teacher: teacher decoder layers copied, in order (default: evenly spaced)")
    widths: Literal["equal", "slice"] = Field("equal", description="init teacher: copy only tensors of the student's shape (equal), or also the leading slice of wider ones, a narrower student's weight selection (slice; docs/distill.md)")

    @model_validator(mode="after")
    def _needs(self):
        from tiercel.models.presets import PRESETS

        if self.init == "checkpoint" and self.checkpoint is None:
            raise ValueError("student.init checkpoint needs student.checkpoint")
        if self.init != "checkpoint" and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}'; valid: {', '.join(PRESETS)}")
        if "vocab_size" in self.overrides:
            raise ValueError("overrides.vocab_size: the student's vocabulary is its tokenizer's; set tokenizer.vocab_size "
                             "(with tokenizer.source train) instead")
        if self.overrides and self.init != "checkpoint":  # sizes and types checked now, not as the model is built
            from tiercel.models.presets import get_preset

            try:
                get_preset(self.preset, **self.overrides)
            except (ConfigError, TypeError) as err:
                raise ValueError(f"overrides: {str(err).removeprefix(f'preset {self.preset!r}: ')}") from None
        return self


class TokenizerSection(Section):
    source: Literal["teacher", "student", "train", "file"] = Field("teacher", description="use the teacher's / student checkpoint's tokenizer, a tokenizer.json file, or train a BPE one on the training data")
    vocab_size: int = Field(2000, gt=256, description="train: learned BPE vocabulary (Falcon grammar tokens are added on top)")
    path: Path | None = Field(None, description="file: the tokenizer.json to use")

    @model_validator(mode="after")
    def _needs(self):
        if self.source == "file" and self.path is None:
            raise ValueError("tokenizer.source file needs tokenizer.path")
        return self


class HiddenSection(Section):
    vision: float = Field(0.0, ge=0, description="weight of the image-feature (projector output) loss")
    encoder: float = Field(0.0, ge=0, description="weight of the text-encoder output loss")
    decoder: float = Field(0.0, ge=0, description="weight of the decoder hidden-state loss over decoder_layers")
    decoder_layers: dict[int, int] = Field(default_factory=dict, description="student decoder layer -> teacher decoder layer (hidden states after that layer)")
    stages: float = Field(0.0, ge=0, description="weight of the vision-stage loss over stage_pairs: each student stage's feature map, projected per position to the teacher stage's width, against the teacher's map normalised per position (FitNets)")
    stage_pairs: dict[int, int] = Field(default_factory=dict, description="student vision stage -> teacher vision stage (0-based, feature maps after that stage); empty: every stage to the one of the same index")
    kind: Literal["mse", "cosine"] = Field("mse", description="distance between projected student and teacher features")


class DenseSection(Section):
    answer: float = Field(0.0, ge=0, description="weight of the answer-cover loss: the text encoder's output at the image slots predicts where the record's answer geometry lies (geometry tasks only)")
    objects: float = Field(0.0, ge=0, description="weight of the object-cover loss: the image tokens predict where each class of data.objects lies")
    cells: int = Field(4, ge=1, le=16, description="cells per image-token side that the dense losses predict")


class DistillSection(Section):
    steps: int = Field(1000, gt=0, le=10**9, description="optimizer steps")
    batch_size: int = Field(8, gt=0, le=65536, description="samples per step per process, before accumulation")
    grad_accum: int = Field(1, gt=0, le=65536, description="micro-batches accumulated per optimizer step")
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to norms and biases)")
    warmup_steps: int = Field(50, ge=0, description="linear warmup steps, then cosine decay to min_lr_ratio * lr")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a fraction of lr")
    clip_grad: float = Field(1.0, gt=0, description="gradient norm clipping")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype; fp16 only on CUDA (with loss scaling)")
    ce: float = Field(1.0, ge=0, description="weight of cross-entropy on the labels")
    kd: float = Field(0.0, ge=0, description="weight of the logit divergence to the teacher")
    loss_norm: Literal["token", "sample"] = Field("token", description="ce/kd averaged over every answer token of the batch (token), or per sample first, so a 2-token class name weighs as much as a 200-token polygon list (sample)")
    divergence: Divergence = Field("forward_kl", description="forward_kl, reverse_kl, jsd (beta), skew_kl / skew_reverse_kl (alpha)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature for KD (loss scaled by T^2)")
    beta: float = Field(0.5, ge=0, le=1, description="generalised JSD interpolation")
    alpha: float = Field(0.1, ge=0, le=1, description="skew KL mixing")
    hidden: HiddenSection = Field(default_factory=HiddenSection, description="hidden-state distillation")
    dense: DenseSection = Field(default_factory=DenseSection, description="dense losses on the image-token grid for training from scratch (docs/distill.md)")
    on_policy: float = Field(0.0, ge=0, le=1, description="probability that a batch uses student-generated answers supervised by the teacher (GKD)")
    eval_every: int = Field(0, ge=0, description="steps between validation runs (0: only at the end)")
    eval_limit: int = Field(200, gt=0, description="validation records per evaluation")
    save_every: int = Field(200, gt=0, description="steps between checkpoints")
    log_every: int = Field(10, gt=0, description="steps between metric log lines")
    keep_checkpoints: int = Field(2, gt=0, description="most recent checkpoints kept")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="multi-process strategy under torchrun")
    image_cache: int = Field(4096, ge=0, description="preprocessed images kept in memory")
    compile: bool = Field(False, description="torch.compile the student and its losses (opt-in; the first steps compile, several seconds to minutes; measured on CPU in benchmarks/results/train_speed_cpu.md)")

    @model_validator(mode="after")
    def _losses(self):
        if self.ce == 0 and self.kd == 0 and not (self.hidden.vision or self.hidden.encoder or self.hidden.decoder
                                                  or self.hidden.stages):
            raise ValueError("every loss weight is 0; set distill.ce and/or distill.kd")
        return self


class SynthSection(Section):
    n: int = Field(3000, ge=42, description="records over all splits")
    size: int = Field(128, ge=64, description="image side in pixels")
    seed: int = Field(0, description="generator seed")


class TrainTeacherSection(Section):
    preset: str = Field("tiny", description="teacher model preset")
    overrides: dict = Field(default_factory=dict, description="ModelShape fields replacing the preset's")
    steps: int = Field(300, gt=0, description="fine-tuning steps")
    batch_size: int = Field(8, gt=0, description="samples per step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup steps before the cosine decay (default: steps // 20)")
    vocab_size: int = Field(1000, gt=256, description="BPE vocabulary trained on the data (grammar tokens added on top)")
    coord_init: Literal["random", "sinusoid"] = Field("random", description="embeddings of the coordinate tokens <0>..<999> of the new teacher, random or a smooth code of the bin (docs/fidelity.md)")
    dense: DenseSection = Field(default_factory=DenseSection, description="dense losses while training the teacher (distill.dense; docs/distill.md)")


class PipelineSection(Section):
    synth: SynthSection | None = Field(None, description="generate the synthetic benchmark into data.root when data.train is missing")
    train_teacher: TrainTeacherSection | None = Field(None, description="fine-tune the teacher on the data first, into <out>/teacher")


class ExportSection(Section):
    backends: list[str] = Field(["onnxruntime", "openvino"], description="bundle backends (runtime.backends.bundle_backends)")
    decoder: Literal["split", "merged"] = Field("split", description="decoder graph layout")


    @field_validator("backends")
    @classmethod
    def _known(cls, backends):
        from tiercel.runtime.backends import bundle_backends

        return [choose("backend", name, bundle_backends()) for name in backends]


class QuantizeSection(QuantizeOptions):
    """The quantized bundles a pipeline makes: one per scheme, each with these settings (QuantizeSettings'
    fields and defaults, so the recipe, the CLI and the Python API agree)."""

    schemes: list[str] = Field(["int8-dynamic", "int4-weight-only"], description="quantised bundles made from the fp32 student bundle")

    @field_validator("schemes")
    @classmethod
    def _known(cls, schemes):
        for scheme in schemes:
            known_scheme(scheme)
        return schemes

    @model_validator(mode="after")
    def _schemes(self):
        for scheme in self.schemes:
            self.check_scheme(scheme)
        self.check_int4_options(self.schemes)
        return self

    def settings(self, scheme: str) -> QuantizeSettings:
        """One scheme's settings; all_layers only where that scheme writes int4 (it is checked against the list)."""
        data = self.model_dump(exclude={"schemes"})
        data["all_layers"] = data["all_layers"] and has_int4(scheme, self.policy)
        return QuantizeSettings(scheme=scheme, **data)


class EvalSection(Section):
    split: Literal["val", "test"] = Field("test", description="which data split the report scores")
    limit: int = Field(10, gt=0, description="records per task")
    max_new_tokens: int = Field(64, gt=0, description="generation cap")
    num_beams: int = Field(1, gt=0, description="beam width")
    protocol: Literal["tiercel", "falcon", "both"] = Field(
        "tiercel", description="how the report scores: tiercel's metrics, Falcon's published evaluation, or both (docs/eval.md)")


class ProfileSection(Section):
    runs: int = Field(3, gt=0, le=100_000, description="timed runs per task")
    warmup: int = Field(1, ge=0, le=100_000, description="untimed runs first")
    new_tokens: int = Field(16, ge=2, description="tokens generated per run (forced, for comparable timings)")
    tasks: list[str] = Field(["IMG_CAP", "REG_DET_HBB"], description="tasks timed")

    @field_validator("tasks")
    @classmethod
    def _tags_known(cls, tasks):
        return [_known_tag(tag) for tag in tasks]


class Recipe(Section):
    name: str = Field(description="job name, used in output paths")
    out: Path = Field(Path("runs"), description="output directory of the job")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for data order and initialisation")
    data: DataSection
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    student: StudentSection = Field(default_factory=StudentSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    pipeline: PipelineSection = Field(default_factory=PipelineSection, description="stages only `tiercel pipeline` runs")
    export: ExportSection = Field(default_factory=ExportSection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)

    @model_validator(mode="after")
    def _consistent(self):
        h = self.distill.hidden
        hidden = any((h.vision, h.encoder, h.decoder, h.stages))
        kind = self.teacher.spec
        logit_kinds = [k.name for k in TEACHER_KINDS.values() if k.logits != "none"]
        if (self.distill.kd > 0 or self.distill.on_policy > 0 or hidden) and kind.logits == "none":
            raise ValueError(f"distill.kd/hidden/on_policy need teacher.kind {' or '.join(logit_kinds)} (got {self.teacher.kind})")
        if kind.logits != "none" and not kind.hidden and (hidden or self.distill.on_policy):
            live = [k.name for k in TEACHER_KINDS.values() if k.hidden]
            raise ValueError(f"a {self.teacher.kind} teacher holds only top-k logits; hidden-state and on-policy "
                             f"distillation need teacher.kind {' or '.join(live)}")
        teacher_dense = self.pipeline.train_teacher.dense.objects if self.pipeline.train_teacher else 0
        if (self.distill.dense.objects > 0 or teacher_dense > 0) and self.data.objects is None:
            raise ValueError("distill.dense.objects (or pipeline.train_teacher.dense.objects) needs data.objects, the per-image "
                             "shapes file (tiercel data synth writes objects.json)")
        if self.pipeline.train_teacher is not None and self.teacher.kind != "checkpoint":
            raise ValueError("pipeline.train_teacher trains a teacher for teacher.kind checkpoint")
        if self.tokenizer.source == "teacher" and not kind.tokenizer:
            if not (self.student.init == "checkpoint"):
                raise ValueError("tokenizer.source teacher needs a teacher checkpoint; use tokenizer.source train or student")
        return self


def _format_errors(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after",)) or "(top level)"
        msg = named(e["msg"].removeprefix("Value error, "), lambda field: f"{loc}.{field}" if loc != "(top level)" else field)
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None or e["type"] == "missing" else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{where}: " + "; ".join(parts)


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    """Validate a recipe dict, raising one ConfigError that lists every error with its field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of sections (data, teacher, student, distill, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def load_recipe(path: str | Path | Traversable, overrides: dict | None = None) -> Recipe:
    """Read and validate a YAML recipe: a file, or the name of a shipped recipe (`demo`, see tiercel.recipes) when
    no file of that name exists. Relative paths in it (data, teacher, student, out) are used as they are, so they
    resolve against the working directory the command runs in, not the recipe's folder."""
    source, where = _source(path)
    try:
        data = yaml.load(source.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKey as err:
        raise ConfigError(f"{where}: {err}; keep one of them") from None
    except FileNotFoundError:
        raise ConfigError(f"{where}: recipe file not found; give a YAML file or a shipped recipe's name "
                          f"({', '.join(recipes.names())})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file (not UTF-8); give the recipe's YAML file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder; give the recipe's YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{line}") from None
    except RecursionError:  # PyYAML's composer recurses once per nested [ or {
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from None
    for dotted, value in (overrides or {}).items() if isinstance(data, dict) else ():  # else parse_recipe says what it is
        _set(data, dotted, value, where)
    return parse_recipe(data, where)


class DuplicateKey(yaml.YAMLError):
    """A mapping of a recipe names one key twice: YAML keeps the last silently, which drops the first section."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python objects) that refuses a key given twice in one mapping. Checked as each mapping
    is composed, before merge keys (`<<: *defaults`) copy keys in, so a key a merge brings may be given again."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise DuplicateKey(f"'{key_node.value}' is given twice (lines {seen[key] + 1} and "
                                   f"{key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line
        return node


def _source(path: str | Path | Traversable) -> tuple[Path | Traversable, str]:
    """What to read for `path` and how errors name it. A file that exists wins over a shipped recipe's name; a
    folder is never a recipe (`tiercel pipeline demo --out demo` twice still means the shipped demo)."""
    if not isinstance(path, (str, Path)):  # a shipped recipe's resource, e.g. tiercel.recipes.get("demo")
        return path, path.name
    path = Path(path)
    if path.is_file():
        return path, str(path)
    shipped = recipes.find(str(path))
    if shipped is not None:
        return shipped, str(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a recipe file; give a YAML file or a shipped recipe's name "
                          f"({', '.join(recipes.names())})")
    return path, str(path)


def _set(data: dict, dotted: str, value, where: str = "recipe"):
    keys = dotted.split(".")
    for n, k in enumerate(keys[:-1]):
        if data.get(k) is None:  # missing, or `hidden:` left empty in the file
            data[k] = {}
        data = data[k]
        if not isinstance(data, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: n + 1])} is {data!r} in {where}, not a section "
                              "whose fields can be set; set the whole section instead")
    data[keys[-1]] = value


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML, as written next to outputs."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
