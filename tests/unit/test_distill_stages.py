"""distill.hidden.stages: each student vision stage's feature map against the teacher's, per position."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.objective import DistillObjective, run_model, stage_pairs  # noqa: E402
from tiercel.errors import ConfigError  # noqa: E402
from tiercel.recipe import DistillSection  # noqa: E402


def inputs(model, batch: int = 2, side: int = 64):
    g = torch.Generator().manual_seed(0)
    ids = torch.full((batch, 4), 5)
    ids[:, 0] = model.config.image_token_id
    n_img = (side // 32) ** 2 + 1
    ids = torch.cat([torch.full((batch, n_img - 1), model.config.image_token_id), ids], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(batch, 3, side, side, generator=g)}


def build(**overrides):
    from tiercel.models import build as build_model

    return build_model("tiny", seed=0, vocab_size=300, image_token_id=3, **{"image_size": 64, **overrides})


def test_run_model_keeps_the_map_after_each_stage_and_the_last_feeds_the_projector():
    model = build()
    x = inputs(model)
    with torch.no_grad():
        out = run_model(model, x, torch.full((2, 3), 2), stages=True)
        last = model.model.vision_tower(x["pixel_values"]).last_hidden_state
    assert [tuple(m.shape) for m in out.stages] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 48, 4, 4), (2, 64, 2, 2)]
    torch.testing.assert_close(out.stages[-1], last)
    assert run_model(model, x, torch.full((2, 3), 2)).stages == ()


def test_deeper_stages_keep_their_last_block():
    model = build(vision_depths=[1, 2, 1, 1])
    x = inputs(model)
    captured = []
    hook = model.model.vision_tower.blocks[1][1].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            out = run_model(model, x, torch.full((2, 3), 2), stages=True)
    finally:
        hook.remove()
    torch.testing.assert_close(out.stages[1], captured[0])


def test_the_stage_loss_is_the_mse_against_the_teachers_map_normalised_per_position():
    student, teacher = build(), build(vision_dims=[16, 32, 48, 64])  # equal widths: projected all the same
    torch.manual_seed(1)
    for p in teacher.parameters():
        p.data.normal_(0, 0.5)
    cfg = DistillSection(ce=1.0, hidden={"stages": 2.0, "stage_pairs": {1: 1, 3: 3}})
    obj = DistillObjective(student, cfg, teacher.tiercel_shape)
    x = inputs(student)
    batch = {"student": x, "decoder_input_ids": torch.full((2, 3), 2), "labels": torch.full((2, 3), 7)}
    with torch.no_grad():
        t_out = run_model(teacher, x, batch["decoder_input_ids"], stages=True)
        _, terms, s_out = obj(batch, t_out)
    assert sorted(k for k in obj.distiller.state_dict() if k.endswith("weight")) == ["proj.stage_1.weight", "proj.stage_3.weight"]
    for i in (1, 3):
        with torch.no_grad():
            s = obj.distiller.proj[f"stage_{i}"](s_out.stages[i].flatten(2).transpose(1, 2))
        t = t_out.stages[i].flatten(2).transpose(1, 2)
        t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(terms[f"hidden_stage.{i}"], ((s - t) ** 2).mean(), rtol=1e-5, atol=1e-6)
    assert sorted(terms) == ["ce", "hidden_stage.1", "hidden_stage.3"]


def test_a_narrower_student_learns_one_projection_per_stage():
    student, teacher = build(vision_dims=[8, 16, 24, 32], vision_heads=[1, 1, 1, 2], vision_groups=[1, 1, 1, 2]), build()
    obj = DistillObjective(student, DistillSection(ce=1.0, hidden={"stages": 1.0}), teacher.tiercel_shape)
    shapes = {k: tuple(v.shape) for k, v in obj.distiller.state_dict().items() if k.endswith("weight")}
    assert shapes == {"proj.stage_0.weight": (16, 8), "proj.stage_1.weight": (32, 16), "proj.stage_2.weight": (48, 24),
                      "proj.stage_3.weight": (64, 32)}


def test_a_stage_either_model_lacks_is_one_line():
    student = build()
    cfg = DistillSection(ce=1.0, hidden={"stages": 1.0, "stage_pairs": {0: 4}})
    with pytest.raises(ConfigError) as err:
        DistillObjective(student, cfg, student.tiercel_shape)
    assert str(err.value) == ("distill.hidden.stage_pairs: 0: 4 names a vision stage the models lack (student stages "
                              "0..3, teacher 0..3)")
    assert stage_pairs(cfg.hidden.model_copy(update={"stage_pairs": {}}), student.tiercel_shape) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_a_larger_teacher_grid_is_averaged_down_to_the_students():
    student, teacher = build(), build(image_size=128)  # the teacher's grids are twice the student's on each side
    obj = DistillObjective(student, DistillSection(ce=1.0, hidden={"stages": 1.0, "stage_pairs": {0: 0}}), teacher.tiercel_shape)
    x = inputs(student)
    t_x = inputs(teacher, side=128)
    batch = {"student": x, "decoder_input_ids": torch.full((2, 3), 2), "labels": torch.full((2, 3), 7)}
    with torch.no_grad():
        t_out = run_model(teacher, t_x, batch["decoder_input_ids"], stages=True)
        _, terms, s_out = obj(batch, t_out)
        s = obj.distiller.proj["stage_0"](s_out.stages[0].flatten(2).transpose(1, 2))
        t = torch.nn.functional.avg_pool2d(t_out.stages[0], 2).flatten(2).transpose(1, 2)  # 32x32 -> 16x16
        t = torch.nn.functional.layer_norm(t, t.shape[-1:])
    torch.testing.assert_close(terms["hidden_stage.0"], ((s - t) ** 2).mean(), rtol=1e-5, atol=1e-6)
