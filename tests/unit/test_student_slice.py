"""student.widths slice: a narrower student starts from the leading slices of its teacher's tensors."""

from __future__ import annotations

import pytest
import torch

from tiercel.distill.student import copy_from_teacher, leading_slice
from tiercel.models import build
from tiercel.recipe import StudentSection

TEACHER = {"vision_dims": [16, 32, 64, 128], "vision_heads": [1, 2, 2, 4], "vision_groups": [1, 2, 2, 4],
           "d_model": 64, "ffn_dim": 128, "image_size": 64}
STUDENT = {"vision_dims": [8, 16, 32, 64], "vision_heads": [1, 1, 2, 2], "vision_groups": [1, 1, 2, 2],
           "d_model": 32, "ffn_dim": 64, "encoder_layers": 1, "decoder_layers": 1, "image_size": 64}


def models():
    teacher = build("tiny", seed=0, vocab_size=300, image_token_id=299, **TEACHER)
    student = build("tiny", seed=1, vocab_size=300, image_token_id=299, **STUDENT)
    return teacher, student


def test_a_fused_qkv_is_sliced_per_third():
    ref = torch.arange(12 * 4, dtype=torch.float32).reshape(12, 4)  # q rows 0-3, k rows 4-7, v rows 8-11
    got = leading_slice("blocks.0.window_attn.qkv.weight", ref, (6, 2))
    assert got.tolist() == [ref[0, :2].tolist(), ref[1, :2].tolist(), ref[4, :2].tolist(), ref[5, :2].tolist(),
                            ref[8, :2].tolist(), ref[9, :2].tolist()]
    assert leading_slice("fc1.weight", ref, (6, 2)).tolist() == ref[:6, :2].tolist()
    assert leading_slice("fc1.weight", ref, (13, 2)) is None  # wider than the teacher: not copied


@pytest.mark.parametrize("widths", ["equal", "slice"])
def test_a_narrower_student_takes_the_teachers_leading_slices_only_when_asked(widths):
    teacher, student = models()
    section = StudentSection(init="teacher", preset="tiny", overrides=STUDENT, widths=widths)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = copy_from_teacher(student, teacher, section)
    t, s = teacher.state_dict(), student.state_dict()
    conv = "model.vision_tower.convs.1.conv.weight"  # [16, 8, 3, 3] from [32, 16, 3, 3]
    fc1 = "model.language_model.decoder.layers.0.fc1.weight"  # decoder layer 0 <- the teacher's last layer
    qkv = next(k for k in s if k.endswith("spatial_block.window_attn.qkv.weight") and ".blocks.3." in k)
    if widths == "equal":
        assert torch.equal(s[conv], before[conv]) and report["copied_fraction"] < 0.05
        return
    assert torch.equal(s[conv], t[conv][:16, :8])
    src = report["layer_map"]["decoder"][0]
    assert torch.equal(s[fc1], t[fc1.replace("layers.0", f"layers.{src}")][:64, :32])
    c = s[qkv].shape[0] // 3
    assert torch.equal(s[qkv][c:2 * c], t[qkv][t[qkv].shape[0] // 3:][:c, : s[qkv].shape[1]])  # k from k
    assert report["copied_fraction"] == pytest.approx(1.0)  # every parameter
    buffers = {k for k, _ in student.named_buffers()}
    assert report["skipped"] and all(k in buffers for k, _ in report["skipped"])  # the fixed tables keep their own
