"""Distillation losses against plain numpy references written out formula by formula (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.losses import (  # noqa: E402
    DIVERGENCES,
    HiddenDistiller,
    align_image_tokens,
    ce_loss,
    divergence,
    topk_divergence,
)
from tiercel.errors import ConfigError  # noqa: E402

KINDS = sorted(DIVERGENCES)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def reference(kind, p, q, beta, alpha):
    """One token's divergence: p the teacher's distribution, q the student's (numpy vectors)."""
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "skew_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p)
    raise AssertionError(kind)


def reference_divergence(kind, student, teacher, mask, temperature, beta=0.3, alpha=0.2):
    values = []
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if mask[b, t]:
                p = softmax(teacher[b, t] / temperature)
                q = softmax(student[b, t] / temperature)
                values.append(reference(kind, p, q, beta, alpha))
    return temperature**2 * sum(values) / len(values)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(2, 5, 11)) * 2
    teacher = rng.normal(size=(2, 5, 11)) * 3
    mask = rng.random((2, 5)) > 0.3
    mask[0, 0] = True
    return student, teacher, mask


def test_ce_loss_matches_negative_log_likelihood_over_kept_tokens():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 7))
    labels = rng.integers(0, 7, size=(2, 4))
    labels[0, 1] = labels[1, 3] = -100
    nll = [-math.log(softmax(logits[b, t])[labels[b, t]]) for b in range(2) for t in range(4) if labels[b, t] != -100]
    got = ce_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert got.item() == pytest.approx(sum(nll) / len(nll), abs=1e-5)
    assert ce_loss(torch.zeros(1, 2, 3), torch.full((1, 2), -100)).item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergence_matches_reference(kind, temperature, logits):
    student, teacher, mask = logits
    got = divergence(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32),
                     torch.tensor(mask), kind=kind, temperature=temperature, beta=0.3, alpha=0.2)
    want = reference_divergence(kind, student, teacher, mask, temperature)
    assert got.item() == pytest.approx(want, abs=1e-5, rel=1e-5)


def test_forward_kl_gradient_is_temperature_times_q_minus_p():
    """d/ds of T^2 KL(p || softmax(s/T)) is T (q - p) per token (the Hinton scaling keeps gradients comparable)."""
    rng = np.random.default_rng(2)
    s = torch.tensor(rng.normal(size=(1, 1, 6)), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(rng.normal(size=(1, 1, 6)), dtype=torch.float32, requires_grad=True)
    divergence(s, t, kind="forward_kl", temperature=3.0).backward()
    p, q = softmax(t.detach().numpy()[0, 0] / 3), softmax(s.detach().numpy()[0, 0] / 3)
    np.testing.assert_allclose(s.grad.numpy()[0, 0], 3 * (q - p), atol=1e-6)
    assert t.grad is None  # the teacher is never trained by the loss


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_stays_finite_when_probabilities_underflow(kind):
    student = torch.tensor([[[0.0, -1e4, 3.0, 50.0]]], requires_grad=True)
    teacher = torch.tensor([[[80.0, -3e4, -2e4, 0.0]]])  # exp() of these log-probs underflows to 0 in float32
    loss = divergence(student, teacher, kind=kind, beta=0.5, alpha=0.1)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
    p, q = softmax(teacher.numpy()[0, 0].astype(np.float64)), softmax(student.detach().numpy()[0, 0].astype(np.float64))
    if kind == "forward_kl":
        assert loss.item() == pytest.approx(kl(p, q), rel=1e-5)
    assert math.isfinite(divergence(student.detach().half(), teacher.half(), kind=kind).item())


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "skew_kl", "skew_reverse_kl"])
def test_a_teacher_with_minus_infinity_logits_gives_no_nan(kind):
    student = torch.tensor([[[0.0, 1.0, 3.0]]], requires_grad=True)
    teacher = torch.tensor([[[2.0, float("-inf"), 0.0]]])  # e.g. a masked-out vocabulary entry
    loss = divergence(student, teacher, kind=kind)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(student.grad).all()
    # reverse KL is truly infinite there (q > 0 = p): reported as inf, never NaN
    assert divergence(student.detach(), teacher, kind="reverse_kl").item() == math.inf


def test_divergence_with_an_empty_mask_is_zero_and_differentiable(logits):
    s = torch.tensor(logits[0], dtype=torch.float32, requires_grad=True)
    loss = divergence(s, torch.tensor(logits[1]), torch.zeros(2, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


def test_unknown_kind_and_bad_parameters_are_config_errors(logits):
    s, t = torch.tensor(logits[0]), torch.tensor(logits[1])
    with pytest.raises(ConfigError, match="valid kinds: forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl"):
        divergence(s, t, kind="kl")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        divergence(s, t, temperature=0)
    with pytest.raises(ConfigError, match="beta must be in"):
        divergence(s, t, kind="jsd", beta=1.0)
    with pytest.raises(ConfigError, match="shared vocabulary"):
        divergence(s, t[..., :5])


@pytest.mark.parametrize("kind", KINDS)
def test_topk_with_k_equal_to_vocabulary_is_full_divergence_in_any_order(kind, logits):
    student, teacher, mask = (torch.tensor(x) for x in logits)
    student, teacher = student.float(), teacher.float()
    order = torch.stack([torch.randperm(11, generator=torch.Generator().manual_seed(i)) for i in range(10)])
    indices = order.reshape(2, 5, 11)
    values = teacher.gather(-1, indices)
    full = divergence(student, teacher, mask, kind=kind, temperature=2.0, beta=0.3, alpha=0.2)
    topk = topk_divergence(student, values, indices, mask, kind=kind, temperature=2.0, beta=0.3, alpha=0.2)
    assert topk.item() == pytest.approx(full.item(), abs=1e-5)
    # log-probabilities cached instead of logits give the same loss (a per-token shift cancels)
    logp = torch.log_softmax(teacher, -1).gather(-1, indices)
    assert topk_divergence(student, logp, indices, mask, kind=kind, temperature=2.0, beta=0.3,
                           alpha=0.2).item() == pytest.approx(full.item(), abs=1e-5)


def test_topk_of_a_peaked_teacher_obeys_the_chain_rule_bound():
    """KL(p||q) = P KL(p_S||q_S) + (1-P) KL(p_rest||q_rest) + KL(Bern P || Bern Q), checked in float64 numpy."""
    rng = np.random.default_rng(3)
    vocab, k = 12, 3
    teacher = rng.normal(size=vocab)
    teacher[[4, 7, 1]] += [12.0, 10.0, 9.0]  # peaked: ~99.9% of the mass on 3 tokens
    student = teacher * 0.7 + rng.normal(size=vocab) * 0.5
    idx = np.argsort(-teacher)[:k]
    rest = np.setdiff1d(np.arange(vocab), idx)
    p, q = softmax(teacher), softmax(student)
    big_p, big_q = p[idx].sum(), q[idx].sum()
    topk = topk_divergence(torch.tensor(student[None, None]), torch.tensor(teacher[idx][None, None]),
                           torch.tensor(idx[None, None]), kind="forward_kl").item()
    kl_s = kl(p[idx] / big_p, q[idx] / big_q)
    kl_rest = kl(p[rest] / (1 - big_p), q[rest] / (1 - big_q))
    kl_bern = kl([big_p, 1 - big_p], [big_q, 1 - big_q])
    assert topk == pytest.approx(kl_s, abs=1e-5)
    assert kl(p, q) == pytest.approx(big_p * kl_s + (1 - big_p) * kl_rest + kl_bern, abs=1e-9)
    bound = (1 - big_p) * (kl_s + kl_rest) + kl_bern
    assert abs(kl(p, q) - topk) <= bound + 1e-9
    assert 1 - big_p < 1e-3 and abs(kl(p, q) - topk) < 0.02  # close for this peaked teacher


def bilinear_reference(grid, out):
    """Resize [g, g, D] to [out, out, D]: half-pixel centres, clamped at the border (align_corners=False)."""
    g = grid.shape[0]
    scale = g / out
    result = np.zeros((out, out, grid.shape[2]))
    for i in range(out):
        for j in range(out):
            y, x = max((i + 0.5) * scale - 0.5, 0.0), max((j + 0.5) * scale - 0.5, 0.0)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, g - 1), min(x0 + 1, g - 1)
            wy, wx = y - y0, x - x0
            result[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                            + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
    return result


@pytest.mark.parametrize("g_t,g_s", [(6, 4), (4, 6), (5, 5)])
def test_align_image_tokens_resizes_the_grid_and_keeps_the_pooled_token(g_t, g_s):
    rng = np.random.default_rng(4)
    teacher = rng.normal(size=(2, 1 + g_t * g_t, 3))
    got = align_image_tokens(torch.tensor(teacher), 1 + g_s * g_s).numpy()
    assert got.shape == (2, 1 + g_s * g_s, 3)
    for b in range(2):
        np.testing.assert_allclose(got[b, 0], teacher[b, 0], atol=1e-12)
        want = bilinear_reference(teacher[b, 1:].reshape(g_t, g_t, 3), g_s).reshape(-1, 3)
        np.testing.assert_allclose(got[b, 1:], want, atol=1e-5)
    with pytest.raises(ConfigError, match="square grid"):
        align_image_tokens(torch.tensor(teacher), 11)


def test_florence2_projector_puts_the_pooled_token_first(tiny_model):
    """The assumption behind align_image_tokens, checked on transformers' own projector."""
    captured = {}
    proj = tiny_model.model.multi_modal_projector.image_projection
    handle = proj.register_forward_hook(lambda mod, args, out: captured.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            tiny_model.get_image_features(torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    x = captured["x"]
    torch.testing.assert_close(x[:, 0], x[:, 1:].mean(1))


def test_hidden_distiller_mse_and_cosine_match_reference():
    rng = np.random.default_rng(5)
    s_dec, t_dec = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6))
    s_vis, t_vis = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 10, 6))  # 1 + 2x2 vs 1 + 3x3
    mask = np.array([[True, True, False], [True, False, False]])
    for kind in ("mse", "cosine"):
        d = HiddenDistiller({"decoder.1": (4, 6), "vision": (6, 6)}, kind=kind).double()
        assert list(dict(d.named_parameters())) == ["proj.decoder_1.weight", "proj.decoder_1.bias"]
        got = d({"decoder.1": torch.tensor(s_dec), "vision": torch.tensor(s_vis)},
                {"decoder.1": torch.tensor(t_dec), "vision": torch.tensor(t_vis)},
                {"decoder.1": torch.tensor(mask)})
        w = d.proj["decoder_1"].weight.detach().numpy()
        bias = d.proj["decoder_1"].bias.detach().numpy()
        aligned = align_image_tokens(torch.tensor(t_vis), 5).numpy()
        dec = [token_loss(kind, s_dec[b, i] @ w.T + bias, t_dec[b, i]) for b in range(2) for i in range(3) if mask[b, i]]
        vis = [token_loss(kind, s_vis[b, i], aligned[b, i]) for b in range(2) for i in range(5)]
        assert got["decoder.1"].item() == pytest.approx(np.mean(dec), abs=1e-5)
        assert got["vision"].item() == pytest.approx(np.mean(vis), abs=1e-5)


def token_loss(kind, s, t):
    if kind == "mse":
        return float(np.mean((s - t) ** 2))
    return 1 - float(s @ t / (np.linalg.norm(s) * np.linalg.norm(t)))


def test_hidden_distiller_aligns_the_image_prefix_of_encoder_features():
    rng = np.random.default_rng(6)
    student, teacher = rng.normal(size=(1, 5 + 3, 8)), rng.normal(size=(1, 10 + 3, 8))
    d = HiddenDistiller({"encoder": (8, 8)}, image_tokens={"encoder": (5, 10)})
    got = d({"encoder": torch.tensor(student)}, {"encoder": torch.tensor(teacher)})["encoder"].item()
    aligned = np.concatenate([align_image_tokens(torch.tensor(teacher[:, :10]), 5).numpy(), teacher[:, 10:]], 1)
    assert got == pytest.approx(float(np.mean((student - aligned) ** 2)), abs=1e-5)
    with pytest.raises(ConfigError, match="give image_tokens"):
        HiddenDistiller({"encoder": (8, 8)})({"encoder": torch.tensor(student)}, {"encoder": torch.tensor(teacher)})


def test_hidden_distiller_trains_its_projection_and_not_the_teacher():
    d = HiddenDistiller({"encoder": (4, 8)}, kind="cosine")
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 8, requires_grad=True)
    sum(d({"encoder": s}, {"encoder": t}).values()).backward()
    assert s.grad is not None and d.proj["encoder"].weight.grad is not None and t.grad is None


def test_hidden_distiller_config_errors():
    with pytest.raises(ConfigError, match="valid kinds: mse, cosine"):
        HiddenDistiller({"vision": (4, 4)}, kind="l1")
    with pytest.raises(ConfigError, match="collide"):
        HiddenDistiller({"decoder.1": (4, 4), "decoder_1": (4, 4)})
    with pytest.raises(ConfigError, match="missing from the teacher"):
        HiddenDistiller({"vision": (4, 4)})({"vision": torch.zeros(1, 5, 4)}, {})


def test_sample_weights_make_ce_and_kd_a_mean_of_per_sample_means(logits):
    from tiercel.distill.losses import sample_weights

    student, teacher, mask = (torch.tensor(x, dtype=torch.float32) if x.dtype != bool else torch.tensor(x) for x in logits)
    mask[1] = False
    mask[1, 2] = True  # sample 0 keeps several tokens, sample 1 one: token and sample means differ
    labels = torch.where(mask, torch.arange(5).expand(2, 5) % 11, torch.full((2, 5), -100))
    w = sample_weights(mask)
    assert torch.allclose(w.sum(dim=1), torch.ones(2))
    per_sample = [ce_loss(student[b : b + 1], labels[b : b + 1]) for b in range(2)]
    assert ce_loss(student, labels, weights=w).item() == pytest.approx(sum(per_sample).item() / 2, abs=1e-5)
    assert ce_loss(student, labels).item() != pytest.approx(sum(per_sample).item() / 2, abs=1e-3)
    kd = [divergence(student[b : b + 1], teacher[b : b + 1], mask[b : b + 1], temperature=2.0) for b in range(2)]
    got = divergence(student, teacher, mask, temperature=2.0, weights=w)
    assert got.item() == pytest.approx(sum(kd).item() / 2, abs=1e-5)
    order = torch.argsort(teacher, dim=-1, descending=True)
    topk = topk_divergence(student, teacher.gather(-1, order), order, mask, temperature=2.0, weights=w)
    assert topk.item() == pytest.approx(got.item(), abs=1e-4)  # k = V: the same loss
