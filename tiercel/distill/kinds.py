"""Teacher kinds as data: what each `teacher.kind` needs in the recipe and what it gives the student.

The one registry of teacher kinds. The recipe validates against it, and the trainer and setup read these
flags instead of comparing kind names. Adding a kind: a line here, plus the code that produces its supervision
(a live model in trainer.py, a cache in cache.py, answers in answers.py). No torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherKind:
    name: str
    needs_path: bool  # teacher.path: the teacher model (or checkpoint) directory
    needs_cache: bool  # teacher.cache: the top-k logit cache directory
    logits: str  # where KD logits come from: "live" (the model runs beside the student), "cached", or "none"
    hidden: bool  # hidden-state distillation and on-policy sampling (needs the live model)
    trains_on: str  # "data": the training file; "answers": the teacher's generated answers
    tokenizer: bool  # has a tokenizer the student can share (tokenizer.source teacher)
    help: str


TEACHER_KINDS: dict[str, TeacherKind] = {
    "none": TeacherKind("none", False, False, "none", False, "data", False, "plain fine-tuning on the labels"),
    "checkpoint": TeacherKind("checkpoint", True, False, "live", True, "data", True,
                              "logit (and hidden-state, on-policy) KD from a same-family model"),
    "cached": TeacherKind("cached", False, True, "cached", False, "data", True,
                          "KD from top-k logits cached by `tiercel distill cache-teacher`"),
    "generated": TeacherKind("generated", True, False, "none", False, "answers", False,
                             "train on the teacher's answers (any model, e.g. GeoChat)"),
}
