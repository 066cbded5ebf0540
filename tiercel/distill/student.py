"""Student initialisation: random from a preset, from a checkpoint, or layers selected from the teacher.

Teacher-layer selection copies every student tensor whose teacher counterpart has the same shape:
embeddings, vision stages and projector where widths match, and text layers by an index map (DistilBART
style: student layer i <- teacher layer map[i]). What was copied and what was skipped (with the reason) is
returned as a report, which the trainer writes to init_report.json and logs in one line.

With `widths: slice` a student narrower than its teacher takes the leading slice of each wider tensor along
every axis (weight selection: Xu et al., "Initializing Models with Larger Ones", ICLR 2024). Leading slices
keep channel i of one layer wired to channel i of the next, the consistency that paper found to matter. Fused
q/k/v projections (DaViT's `qkv`, rows [q; k; v]) are sliced per third, so the student's k rows come from the
teacher's k rows. Two places stay inconsistent: where a stage's head (or channel-group) width shrinks, a
student head takes parts of one or two teacher heads; and the projector's 2-D position embedding concatenates
a column and a row table, so the student's row half comes from the teacher's row table, not from the
channels at the same index. Only parameters are sliced; buffers (the fixed sinusoid table of the temporal
embedding) keep the student's own values. Written here because it is a few lines over the state dicts; no
library does it for these models.
"""

from __future__ import annotations

import re

import numpy as np

from tiercel.errors import ConfigError


def spaced_layers(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` teacher layer indices spread evenly from the first to the last layer."""
    if n_student > n_teacher:
        raise ConfigError(f"student has {n_student} layers but the teacher only {n_teacher}; give the layer map explicitly")
    return [int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)]


def _layer_map(section, teacher_shape, student_shape) -> dict[str, list[int]]:
    maps = {}
    for part, n_t, n_s, given in (
        ("encoder", teacher_shape.encoder_layers, student_shape.encoder_layers, section.encoder_layers),
        ("decoder", teacher_shape.decoder_layers, student_shape.decoder_layers, section.decoder_layers),
    ):
        layers = list(given) if given is not None else spaced_layers(n_t, n_s)
        if len(layers) != n_s or any(not 0 <= i < n_t for i in layers):
            raise ConfigError(f"student.{part}_layers: needs {n_s} indices in 0..{n_t - 1} (got {layers})")
        maps[part] = layers
    return maps


_TEXT_LAYER = re.compile(r"^(model\.language_model\.(encoder|decoder)\.layers\.)(\d+)(\..+)$")


def teacher_key(student_key: str, maps: dict[str, list[int]]) -> str:
    """The teacher tensor a student tensor is copied from (text layers renumbered through `maps`)."""
    m = _TEXT_LAYER.match(student_key)
    if not m:
        return student_key
    prefix, part, idx, rest = m.groups()
    return f"{prefix}{maps[part][int(idx)]}{rest}"


def leading_slice(key: str, ref, shape):
    """The leading slice of teacher tensor `ref` with the student's `shape` (None when some axis is wider in the
    student or the ranks differ); a fused `qkv` tensor is sliced per third along its first axis."""
    import torch

    if ref.dim() != len(shape) or any(s > t for s, t in zip(shape, ref.shape)):
        return None
    if ".qkv." in key and ref.shape[0] % 3 == 0 and shape[0] % 3 == 0:
        thirds = ref.chunk(3, dim=0)
        return torch.cat([leading_slice("", t, (shape[0] // 3, *shape[1:])) for t in thirds], dim=0)
    return ref[tuple(slice(0, s) for s in shape)]


def copy_from_teacher(student, teacher, section) -> dict:
    """Copy matching tensors from `teacher` into `student` in place; returns {"copied": [...], "skipped": [...]}."""
    import torch

    maps = _layer_map(section, teacher.tiercel_shape, student.tiercel_shape)
    params = dict(student.named_parameters())  # tied weights once; buffers are not sliced nor counted
    names = {k for k, _ in student.named_parameters(remove_duplicate=False)}  # every name of a tied weight too
    t_state = teacher.state_dict()
    copied, skipped = [], []
    with torch.no_grad():
        for key, value in student.state_dict().items():
            src = teacher_key(key, maps)
            ref = t_state.get(src)
            if ref is None:
                skipped.append([key, "no teacher tensor"])
            elif ref.shape == value.shape:
                value.copy_(ref)
                copied.append([key, src])
            elif key.endswith("embed_positions.weight") and ref.shape[1:] == value.shape[1:] and ref.shape[0] >= value.shape[0]:
                value.copy_(ref[: value.shape[0]])  # learned positions: the student keeps the first rows
                copied.append([key, src])
            elif (section.widths == "slice" and key in names
                  and (part := leading_slice(key, ref, value.shape)) is not None):
                value.copy_(part)
                copied.append([key, src])
            else:
                skipped.append([key, f"shape {list(value.shape)} vs teacher {list(ref.shape)}"])
    n_copied = sum(params[k].numel() for k, _ in copied if k in params)
    total = sum(p.numel() for p in params.values())
    return {"layer_map": maps, "copied": copied, "skipped": skipped, "copied_fraction": n_copied / total}


def init_student(section, tokenizer, teacher=None, seed: int = 0):
    """Build the student a recipe's `student` section asks for. Returns (model, report)."""
    from tiercel.models import build, load_checkpoint

    if section.init == "checkpoint":
        ckpt = load_checkpoint(section.checkpoint)
        if len(ckpt.tokenizer) != len(tokenizer):
            raise ConfigError(f"student.checkpoint: its tokenizer has {len(ckpt.tokenizer)} tokens, the run's {len(tokenizer)}; use tokenizer.source student")
        return ckpt.model.train(), {"init": "checkpoint", "path": str(ckpt.path)}
    model = build(section.preset, seed=seed, dropout=section.dropout, vocab_size=len(tokenizer), image_token_id=tokenizer.image_id,
                  **section.overrides)
    if section.init == "preset":
        from tiercel.models.coords import init_coordinates

        report = init_coordinates(model, tokenizer, section.coord_init)
        return model.train(), {"init": "preset", "preset": section.preset, **report}
    if teacher is None:
        raise ConfigError("student.init teacher needs teacher.kind checkpoint (a teacher model to copy from)")
    report = copy_from_teacher(model, teacher, section)
    return model.train(), {"init": "teacher", **report}
