"""Grammar-constrained decoding: the automata accept what the writers write, constrained answers always parse,
and decoding is token-identical to unconstrained decoding wherever that answer already parses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercel import tasks
from tiercel.runtime.constrain import DONE, for_answer

SIZE = (96, 64)
STRUCTURED = [t for t in tasks.TAGS if tasks.get(t).answer in ("box", "quad", "poly", "count")]


def walk(tokenizer, kind: str, dialect: str, text: str) -> bool:
    """Whether the automaton of `kind` accepts the tokens of `text` followed by eos."""
    a = for_answer(tokenizer, kind, dialect)
    q = a.start
    for tok in tokenizer.encode(text):
        q = a.step(q, tok)
        if q == DONE:
            return False
    return a.accepting[q]


points = st.lists(st.tuples(st.floats(0, 95.9), st.floats(0, 63.9)), min_size=3, max_size=6)
boxes = st.lists(st.tuples(st.floats(0, 95), st.floats(0, 63), st.floats(0, 95), st.floats(0, 63)), max_size=3)


@settings(max_examples=40, deadline=None)
@given(boxes=boxes, quads=st.lists(st.lists(st.tuples(st.floats(0, 95), st.floats(0, 63)), min_size=4, max_size=4), max_size=2),
       polys=st.lists(st.lists(points, min_size=1, max_size=2), max_size=2), count=st.integers(0, 10**9 - 1),
       dialect=st.sampled_from(["falcon", "florence"]))
def test_every_answer_the_writers_produce_is_accepted(tiny_tokenizer, boxes, quads, polys, count, dialect):
    results = {"REG_DET_HBB": tasks.Boxes(boxes=[list(b) for b in boxes]), "REG_DET_OBB": tasks.Quads(quads=quads),
               "PIX_SEG": tasks.Polygons(polygons=polys), "IMG_CT": tasks.Count(value=count),
               "IMG_CAP": tasks.Caption(text="A harbor with ships.")}
    for tag, result in results.items():
        spec = tasks.get(tag)
        text = spec.format(result, SIZE, dialect)
        assert walk(tiny_tokenizer, spec.answer, dialect, text), (tag, text)


@pytest.mark.parametrize("kind, text", [
    ("box", "<box><1><2><3></box>"), ("box", "<box><1><2><3><4><5></box>"), ("box", "<box><1><2><3><4>"),
    ("box", "airplane<box><1><2><3><4></box>"), ("box", "<box> <1><2><3><4></box>"), ("box", "<quad><1></quad>"),
    ("quad", "<quad><1><2><3><4></quad>"), ("poly", "<poly><1><2><3><4></poly>"),
    ("poly", "<poly><1><2><3><4><5><6><7></poly>"), ("poly", "<poly><1><2><3><4><5><6><sep></poly>"),
    ("count", ""), ("count", "three"), ("count", "1234567890"), ("count", "3 ships"), ("label", ""), ("label", "  "),
])
def test_malformed_answers_are_rejected(tiny_tokenizer, kind, text):
    assert not walk(tiny_tokenizer, kind, "falcon", text)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), tag=st.sampled_from(tasks.TAGS), dialect=st.sampled_from(["falcon", "florence"]))
def test_random_walks_through_an_automaton_parse_without_warnings(tiny_tokenizer, seed, tag, dialect):
    """Any token path the automaton allows, ended where eos is allowed (inside a structure too: cut back by
    Constraint.rollback, as generate does), decodes to an answer with no warnings."""
    from tiercel.runtime.constrain import Constraint
    from tiercel.runtime.generate import GenerationConfig

    spec, rng = tasks.get(tag), np.random.default_rng(seed)
    a = for_answer(tiny_tokenizer, spec.answer, dialect)
    q, ids, budget = a.start, [], 30
    for used in range(budget):
        mask = a.mask(q, budget - used - 1, len(tiny_tokenizer))
        choice = int(rng.choice(np.flatnonzero(mask)))
        if choice == a.eos:
            break
        ids.append(choice)
        q = a.step(q, choice)
    assert a.accepting[q] or a.eos_anywhere
    ids = Constraint([a], GenerationConfig(forced_bos_token_id=None)).rollback([[*ids, a.eos]])[0]
    result = spec.parse(tiny_tokenizer.decode(ids), SIZE, dialect)
    assert result.warnings == [], (tiny_tokenizer.decode(ids), result.warnings)


# ---- on models: a fitted tiny model (answers parse) and the untrained one (they do not) -----------------------
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.bundles import image, tiny_bundle  # noqa: E402
from tests.fitted import ANSWERS, fitted_model, prompts  # noqa: E402

NEW = 40


@pytest.fixture(scope="module")
def fitted(tiny_model, tiny_tokenizer):
    return fitted_model(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def fitted_bundle(fitted, tiny_tokenizer):
    return tiny_bundle(fitted, tiny_tokenizer)


def _predictor(kind: str, model, tokenizer, backend: str = "onnxruntime"):
    import tiercel.runtime as rt

    if kind == "torch":
        from tiercel.models.predict import TorchPredictor

        return TorchPredictor(model, tokenizer)
    if kind == "graphed":
        from tiercel.models.static_decode import GraphedPredictor

        return GraphedPredictor(model, tokenizer)
    return rt.load(tiny_bundle(model, tokenizer), backend=backend)


def _generate(m, nb: int, new: int = NEW, **kw):
    feats = m.image_features(m.pixel_values(image(1)))
    ps = prompts()
    return m.generate_ids(feats, list(ps.values()), tasks_=list(ps), num_beams=nb, max_new_tokens=new, **kw)


def _texts(m, ids) -> dict[str, str]:
    return {t: m.tokenizer.decode(i) for t, i in zip(prompts(), ids)}


def _warnings(m, ids) -> dict[str, list[str]]:
    return {t: w for t, text in _texts(m, ids).items() if (w := tasks.get(t).parse(text, SIZE).warnings)}


@pytest.mark.parametrize("kind, backend", [("bundle", "onnxruntime"), ("bundle", "openvino"), ("torch", None),
                                           ("graphed", None)])
@pytest.mark.parametrize("nb", [1, 3])
def test_token_identical_where_the_unconstrained_answer_parses(fitted, tiny_tokenizer, kind, backend, nb):
    m = _predictor(kind, fitted, tiny_tokenizer, backend)
    free, constrained = _generate(m, nb, constrained=False), _generate(m, nb)
    assert _texts(m, free) == ANSWERS  # the fitted model's own answers: all 14 parse
    assert _warnings(m, free) == {}
    assert constrained == free


@pytest.mark.parametrize("kind, backend", [("bundle", "onnxruntime"), ("bundle", "openvino"), ("torch", None)])
@pytest.mark.parametrize("nb", [1, 3])
def test_untrained_model_answers_always_parse_when_constrained(tiny_model, tiny_tokenizer, kind, backend, nb):
    m = _predictor(kind, tiny_model, tiny_tokenizer, backend)
    free, constrained = _generate(m, nb, new=16, constrained=False), _generate(m, nb, new=16)
    assert len(_warnings(m, free)) >= 5  # what the grammar is for: the free answers do not parse
    assert _warnings(m, constrained) == {}
    assert all(ids[-1] == m.tokenizer.eos_id for ids in constrained)


def test_bundle_and_torch_path_decode_the_same_constrained_tokens(tiny_model, tiny_tokenizer):
    """The torch path's LogitsProcessor adapter applies the runtime's mask at the same place in the order."""
    for nb in (1, 3):
        want = _generate(_predictor("bundle", tiny_model, tiny_tokenizer), nb, new=16)
        assert _generate(_predictor("torch", tiny_model, tiny_tokenizer), nb, new=16) == want


def test_run_all_gives_each_row_its_own_task_grammar(tiny_model, tiny_tokenizer):
    from tests.bundles import TASK_INPUTS

    m = _predictor("bundle", tiny_model, tiny_tokenizer)
    texts = {t: v["text"] for t, v in TASK_INPUTS.items() if "text" in v}
    regions = {t: v["region"] for t, v in TASK_INPUTS.items() if "region" in v}
    for nb in (1, 3):
        results = m.run_all(image(1), [t for t in tasks.TAGS if t != "PIX_CHG"], texts=texts, regions=regions,
                            num_beams=nb, max_new_tokens=16)
        assert {t: r.warnings for t, r in results.items() if r.warnings} == {}
        assert isinstance(results["IMG_CT"].value, int) and results["IMG_CAP"].text != ""
        # one row's grammar does not leak into another's: each equals the task run alone
        for tag in ("IMG_CT", "REG_DET_HBB", "PIX_SEG", "IMG_CLS"):
            alone = m.run(image(1), tag, num_beams=nb, max_new_tokens=16, **{k: v for k, v in TASK_INPUTS.get(tag, {}).items()})
            assert alone.raw == results[tag].raw


def test_a_cut_at_max_new_tokens_closes_the_structure_in_time(fitted_bundle):
    """Free, 12 tokens cut the second box; constrained, the first box closes and the answer ends by eos."""
    import tiercel.runtime as rt

    m = rt.load(fitted_bundle)
    feats = m.image_features(m.pixel_values(image(1)))
    prompt = prompts()["REG_DET_HBB"]
    free = m.generate_ids(feats, [prompt], tasks_=["REG_DET_HBB"], num_beams=1, max_new_tokens=10, constrained=False)[0]
    ids = m.generate_ids(feats, [prompt], tasks_=["REG_DET_HBB"], num_beams=1, max_new_tokens=10)[0]
    assert tasks.get("REG_DET_HBB").parse(m.tokenizer.decode(free), SIZE).warnings  # ends inside <box>
    assert m.tokenizer.decode(ids) == "<box><104><125><520><625></box>" and ids[-1] == m.tokenizer.eos_id
    assert len(ids) <= 10


def test_a_budget_too_small_for_any_answer_is_cut_and_the_parser_says_so(fitted_bundle):
    import tiercel.runtime as rt

    m = rt.load(fitted_bundle)
    result = m.run(image(1), "IMG_CT", text="ship", num_beams=1, max_new_tokens=2)  # room for <s> and </s> only
    assert result.value is None and result.warnings == ["empty answer"]
    assert m.run(image(1), "IMG_CT", text="ship", num_beams=1, max_new_tokens=3).value == 3


@pytest.mark.parametrize("nb", [1, 3])
def test_unconstrained_gives_the_tokens_of_decoding_without_tasks(tiny_model, tiny_tokenizer, nb):
    m = _predictor("bundle", tiny_model, tiny_tokenizer)
    feats = m.image_features(m.pixel_values(image(1)))
    ps = list(prompts().values())
    old = m.generate_ids(feats, ps, num_beams=nb, max_new_tokens=16)  # no tasks: the path as it was
    assert _generate(m, nb, new=16, constrained=False) == old
    assert _generate(m, nb, new=16) != old


def test_the_ngram_ban_is_lifted_where_it_would_leave_the_grammar_nothing(tiny_tokenizer):
    """After a box's 4th bin only `</box>` is allowed (and eos, which would cut the open box back); no_repeat_ngram_size
    1 bans `</box>` (it came before): the ban is lifted in that row, not the grammar."""
    from tiercel.runtime.constrain import Constraint
    from tiercel.runtime.generate import GenerationConfig, process

    tok = tiny_tokenizer
    cfg = GenerationConfig(num_beams=1, no_repeat_ngram_size=1, max_new_tokens=40)
    ids = [2, 0, *tok.encode("<box><1><2><3><4></box><box><5><6><7><8>")]
    c = Constraint([for_answer(tok, "box", "falcon")], cfg)
    for n in range(1, len(ids) + 1):  # the constraint follows the sequence step by step, as generate does
        scores = np.zeros((1, len(tok)), np.float32)
        out = process(scores, np.array([ids[:n]]), cfg, c, [0])
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == sorted([cfg.eos_token_id, *tok.encode("</box>")])
    assert c.cutback.tolist() == [True]


@pytest.mark.parametrize("kind, text, kept", [
    ("box", "<box><1><2><3><4></box><box><5>", "<box><1><2><3><4></box>"),  # the open box is dropped
    ("box", "<box><1><2><3><4>", "<box><1><2><3><4></box>"),  # 4 bins: closed, as the parser keeps it
    ("quad", "<quad><1><2><3><4><5>", ""),
    ("poly", "<poly>" + "<1><2>" * 8 + "<3>", "<poly>" + "<1><2>" * 8 + "</poly>"),  # 17 values: 16, closed
    ("poly", "<poly>" + "<1><2>" * 3 + "</poly><poly><4><5><6><7>", "<poly>" + "<1><2>" * 3 + "</poly>"),
    ("box", "<box><1><2><3><4></box>", "<box><1><2><3><4></box>"),  # ended where eos was allowed: untouched
])
def test_an_answer_that_ends_inside_a_structure_is_cut_back_as_the_parser_reads_it(tiny_tokenizer, kind, text, kept):
    from tiercel.runtime.constrain import Constraint
    from tiercel.runtime.generate import GenerationConfig

    tok, cfg = tiny_tokenizer, GenerationConfig()  # forced bos 0, eos 2
    c = Constraint([for_answer(tok, kind, "falcon")], cfg)
    [out] = c.rollback([[0, *tok.encode(text), 2]])
    assert out == [0, *tok.encode(kept), 2]
    spec = {"box": "REG_DET_HBB", "quad": "REG_DET_OBB", "poly": "PIX_SEG"}[kind]
    assert tasks.get(spec).parse(tok.decode(out), SIZE, "falcon").warnings == []


@pytest.mark.parametrize("backend, io_binding", [("onnxruntime", False), ("onnxruntime", True), ("openvino", False)])
def test_jump_forward_skips_a_decoder_step_per_forced_tag_with_the_same_tokens(fitted_bundle, backend, io_binding):
    """Greedy, one prompt at a time: `</box>` after the 4th bin and `</quad>` after the 8th are appended without
    a decoder step of their own (the next step feeds two tokens); the tokens are those of one token per step."""
    import tiercel.runtime as rt

    m = rt.load(fitted_bundle, backend=backend, io_binding=io_binding)  # io_binding: the KV cache as OrtValues
    saved, answers = jump_forward_saves(m)
    assert answers == ANSWERS
    assert {t: n for t, n in saved.items() if n} == {"REG_DET_HBB": 2, "REG_DET_OBB": 1, "REG_VG": 1}


def jump_forward_saves(m) -> tuple[dict, dict]:
    """Greedy on every prompt with and without jump-forward: asserts the same tokens; returns the decoder steps
    jump-forward saved per task and the answers."""
    from tiercel.runtime.profile import StageTimer

    feats = m.image_features(m.pixel_values(image(1)))
    saved, answers = {}, {}
    for tag, prompt in prompts().items():
        ids, steps = {}, {}
        for jump in (False, True):
            m.timer = StageTimer()
            ids[jump] = m.generate_ids(feats, [prompt], tasks_=[tag], num_beams=1, max_new_tokens=NEW, jump_forward=jump)
            steps[jump] = [name for name, _ in m.timer.take()].count("decode_token")
        m.timer = None
        assert ids[True] == ids[False], tag
        saved[tag], answers[tag] = steps[False] - steps[True], m.tokenizer.decode(ids[True][0])
    return saved, answers


def test_no_jump_forward_where_two_tokens_in_one_call_would_round_differently(fitted_bundle, tmp_path):
    """int8-dynamic graphs scale activations per call: a two-token call quantizes both tokens with one scale, so
    its logits differ from two one-token calls; such bundles decode one token per step."""
    import tiercel.runtime as rt
    from tiercel.quantize import quantize_bundle

    assert rt.load(fitted_bundle).multi_token and rt.load(fitted_bundle, backend="openvino").multi_token
    out = tmp_path / "int8-dynamic"
    quantize_bundle(fitted_bundle, out, "int8-dynamic", n_val=0)
    assert not rt.load(out).multi_token


def test_int8_weight_only_keeps_jump_forward_with_the_same_tokens(fitted_bundle, tmp_path):
    """MatMulNBits quantizes activations per row and block, so a two-token call gives each token the logits it gets
    alone: int8-weight-only bundles keep jump-forward on onnxruntime, and it changes no token."""
    import tiercel.runtime as rt
    from tiercel.quantize import quantize_bundle

    out = tmp_path / "int8-weight-only"
    quantize_bundle(fitted_bundle, out, "int8-weight-only", n_val=0)
    m = rt.load(out)
    assert m.multi_token
    saved, _ = jump_forward_saves(m)
    assert sum(saved.values()) > 0
    quantize_bundle(fitted_bundle, tmp_path / "ov", "int8-weight-only", n_val=0, backend="openvino")
    assert not rt.load(tmp_path / "ov", backend="openvino").multi_token  # OpenVINO's int8-weight-only IR is its int8-dynamic one
