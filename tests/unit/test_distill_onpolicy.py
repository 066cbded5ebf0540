"""On-policy KD: the student's sampled answers replace the labels, the teacher grades those tokens, and the
loss is the divergence a hand computation gives on them."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.data import IGNORE, SFTData, collate  # noqa: E402
from tiercel.distill.objective import DistillObjective, run_model  # noqa: E402
from tiercel.distill.onpolicy import student_answers  # noqa: E402
from tiercel.distill.trainer import model_input  # noqa: E402
from tiercel.recipe import DistillSection  # noqa: E402


@pytest.fixture()
def case(tiny_model, tiny_tokenizer, synth_dir):
    student = copy.deepcopy(tiny_model).train()
    teacher = copy.deepcopy(tiny_model).eval()
    with torch.no_grad():  # a teacher that disagrees with the student
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    data = SFTData(synth_dir / "train.json", synth_dir, tiny_tokenizer, max_answer_tokens=12)
    inputs = {"student": model_input(student), "teacher": model_input(teacher)}
    batch = collate(data, [0, 1, 2], inputs, tiny_tokenizer.eos_id)
    return student, teacher, tiny_tokenizer, batch


def test_sampled_answers_replace_the_labels(case):
    student, _, tok, batch = case
    original = batch["labels"].clone()
    torch.manual_seed(0)
    student_answers(student, batch, tok, max_tokens=12)
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    assert labels.shape != original.shape or not torch.equal(labels, original)
    assert student.training  # train mode is given back
    assert torch.all(dec[:, 0] == tok.eos_id)  # BART's decoder start
    for row in range(labels.shape[0]):
        kept = labels[row][labels[row] != IGNORE]
        assert kept[0] == tok.bos_id and (kept == tok.eos_id).sum() <= 1  # <s> answer [</s>], nothing after
        n = len(kept)
        assert torch.all(labels[row, n:] == IGNORE)
        assert torch.equal(dec[row, 1:n], labels[row, : n - 1])  # the decoder reads its own previous samples
    torch.manual_seed(0)
    again = {**batch, "labels": original.clone()}
    student_answers(student, again, tok, max_tokens=12)
    assert torch.equal(again["labels"], labels)  # sampling follows torch's RNG, which checkpoints save


def test_the_teacher_grades_the_sampled_tokens_as_a_hand_computed_kl(case):
    student, teacher, tok, batch = case
    torch.manual_seed(1)
    student_answers(student, batch, tok, max_tokens=12)
    cfg = DistillSection(kd=1.0, ce=0.0, divergence="forward_kl", temperature=2.0)
    objective = DistillObjective(student, cfg)
    with torch.no_grad():
        teacher_out = run_model(teacher, batch["teacher"], batch["decoder_input_ids"])
    loss, terms, out = objective(batch, teacher_out, None, ce_weight=0.0)
    mask = batch["labels"] != IGNORE
    s = torch.log_softmax(out.logits.detach()[mask].double() / 2.0, -1)
    t = torch.log_softmax(teacher_out.logits[..., : out.logits.shape[-1]][mask].double() / 2.0, -1)
    by_hand = (t.exp() * (t - s)).sum(-1).mean() * 2.0**2
    assert set(terms) == {"kd"}  # the student's own tokens get no cross-entropy
    assert abs(float(loss.detach()) - float(by_hand)) < 1e-5 * float(by_hand) and float(by_hand) > 0
