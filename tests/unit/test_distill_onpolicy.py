"""On-policy KD: the student's sampled answers replace the labels, the teacher grades those tokens, and the
loss is the divergence a hand computation gives on them."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.data import (  # noqa: E402
    IGNORE,
    SFTData,
    collate,
    model_input,  # noqa: E402
)
from tiercel.distill.onpolicy import student_answers  # noqa: E402


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
    student_answers(student, batch, tok, max_tokens=12, seeds=[11, 12, 13])
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    assert labels.shape != original.shape or not torch.equal(labels, original)
    assert student.training  # train mode is given back
    assert torch.all(dec[:, 0] == tok.eos_id)  # BART's decoder start
    for row in range(labels.shape[0]):
        kept = labels[row][labels[row] != IGNORE]
        assert kept[0] == tok.bos_id and kept[-1] == tok.eos_id and (kept == tok.eos_id).sum() == 1  # <s> answer </s>
        n = len(kept)
        assert n <= int((original[row] != IGNORE).sum())  # it ends by the time the dataset's answer does
        assert torch.all(labels[row, n:] == IGNORE)
        assert torch.equal(dec[row, 1:n], labels[row, : n - 1])  # the decoder reads its own previous samples


def _one_row(batch, row):
    """Row `row` of a batch as a batch of its own, its answer no wider than itself (as collate would give it)."""
    one = {k: ({n: t[row : row + 1] for n, t in v.items()} if isinstance(v, dict) else
               v[row : row + 1] if hasattr(v, "shape") else [v[row]]) for k, v in batch.items()}
    n = int((one["labels"] != IGNORE).sum())
    one["labels"], one["decoder_input_ids"] = one["labels"][:, :n], one["decoder_input_ids"][:, :n]
    return one


def test_a_rows_sample_depends_on_its_seed_not_on_the_batch_or_the_global_rng(case):
    student, _, tok, batch = case
    torch.manual_seed(0)
    together = {**batch}
    student_answers(student, together, tok, max_tokens=12, seeds=[11, 12, 13])
    torch.manual_seed(123)  # the global RNG plays no part
    for row, seed in enumerate([11, 12, 13]):  # nor do the other rows, or how long their dataset answers are
        alone = _one_row(batch, row)
        student_answers(student, alone, tok, max_tokens=12, seeds=[seed])
        n = alone["labels"].shape[1]
        assert torch.equal(alone["labels"][0], together["labels"][row, :n]) and torch.all(together["labels"][row, n:] == IGNORE)
        assert torch.equal(alone["decoder_input_ids"][0], together["decoder_input_ids"][row, :n])
    alone = _one_row(batch, 1)
    student_answers(student, alone, tok, max_tokens=12, seeds=[12])
    other = _one_row(batch, 1)
    student_answers(student, other, tok, max_tokens=12, seeds=[99])
    assert not torch.equal(other["labels"], alone["labels"])  # another seed, another answer (checked for this case)


def test_gumbel_max_samples_from_the_softmax():
    from tiercel.distill.onpolicy import _GumbelNoise

    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    picks = torch.tensor([int(_GumbelNoise([seed])(torch.zeros(1, 3), logits.clone()).argmax()) for seed in range(4000)])
    freq = torch.bincount(picks, minlength=4).double() / len(picks)
    want = torch.softmax(logits[0].double(), -1)
    assert freq[3] == 0 and torch.allclose(freq, want, atol=0.025)  # 3 sigma of 4000 draws is about 0.02


def test_an_on_policy_step_trains_on_the_samples_the_teacher_grades(tiny_checkpoint, synth_dir, tmp_path, monkeypatch):
    from tiercel.distill import objective, trainer
    from tiercel.distill.dist import Dist
    from tiercel.distill.onpolicy import row_seeds
    from tiercel.recipe import parse_recipe

    r = parse_recipe({"name": "op", "out": str(tmp_path), "seed": 1,  # seed 1: a student unlike the (seed 0) teacher
                      "data": {"train": str(synth_dir / "train.json"), "root": str(synth_dir), "max_answer_tokens": 12},
                      "teacher": {"kind": "checkpoint", "path": str(tiny_checkpoint)}, "student": {"preset": "tiny", "dropout": 0.0},
                      "distill": {"batch_size": 3, "on_policy": 1.0, "kd": 1.0, "ce": 1.0, "temperature": 2.0}})
    run = trainer.prepare(r, Dist())
    indices = run.sampler.draw(0, 0, 3)
    want = collate(run.data, indices, run.inputs, run.tokenizer.eos_id)
    dataset_labels = want["labels"].clone()
    student_answers(run.objective.student, want, run.tokenizer, 12, row_seeds(1, 0, 0, indices))
    assert not torch.equal(want["labels"], dataset_labels)
    calls, real = [], objective.run_model

    def spy(model, inputs, decoder_input_ids, hidden=False, stages=False):
        out = real(model, inputs, decoder_input_ids, hidden, stages)
        calls.append((model, decoder_input_ids, out.logits.detach()))
        return out

    monkeypatch.setattr(objective, "run_model", spy)
    log, units = trainer.micro_step(run, 0, 0, total=1, sync=True)
    (teacher, t_dec, t_logits), (student, s_dec, s_logits) = calls
    assert teacher is run.teacher.model and student is run.objective.student
    assert torch.equal(t_dec, want["decoder_input_ids"]) and torch.equal(s_dec, want["decoder_input_ids"])
    mask = want["labels"] != IGNORE
    assert units == int(mask.sum())  # the loss is a mean over the sampled tokens, not the dataset's
    s = torch.log_softmax(s_logits[mask].double() / 2.0, -1)
    t = torch.log_softmax(t_logits[..., : s_logits.shape[-1]][mask].double() / 2.0, -1)
    by_hand = float((t.exp() * (t - s)).sum(-1).mean() * 2.0**2)  # forward KL at T=2, times T^2
    assert set(log) == {"loss", "kd"}  # the student's own tokens get no cross-entropy, whatever distill.ce says
    # the library works in float32, whose log-softmaxes over ~1,400 tokens agree with float64 to ~1e-7 here; 1e-6
    # is far below what a missing T^2 or a teacher graded on other tokens does to this 0.026 loss
    assert by_hand > 0.01 and abs(log["loss"] - by_hand) < 1e-6
