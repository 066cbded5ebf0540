"""protocol="falcon": each of Falcon's scoring rules on a minimal input, with the value worked out by hand.

Where the rule is one tiercel's own protocol does not follow, the test also shows tiercel's number, so the
difference documented in docs/eval.md is pinned down.
"""

from __future__ import annotations

import math

import pytest

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.evaluate import evaluate
from tiercel.tasks.results import Boxes, Caption, Count, Label


def labels(texts, cls=Label):
    """Answers parsed as the runtime parses them (raw kept, decoder tokens dropped from .text)."""
    return [T.get("IMG_CAP" if cls is Caption else "IMG_CLS").parse(t) for t in texts]


def parsed(tag, texts, size=(1000, 1000)):
    return [T.get(tag).parse(t, image_size=size) for t in texts]


def falcon(tag, preds, refs, sizes=None, crops=None):
    return T.get(tag).metric(preds, refs, sizes, protocol="falcon", crops=crops)


def box(*bins):
    return "<box>" + "".join(f"<{b}>" for b in bins) + "</box>"


def quad(*bins):
    return "<quad>" + "".join(f"<{b}>" for b in bins) + "</quad>"


def poly(*bins):
    return "<poly>" + "".join(f"<{b}>" for b in bins) + "</poly>"


# --- labels, VQA, counts ------------------------------------------------------------------------------------

def test_single_label_sets_and_the_dummy_class():
    # Normalised: refs farmland, airport, harbor, harbor; preds {farmland} (the duplicate collapses),
    # {airport} ("Airport." -> "airport"), {dock} -> dummy (outside the reference classes), {harbor}.
    # Right: 1, 2, 4 -> accuracy 3/4.
    # Columns farmland, airport, harbor, dummy: precision 1, 1, 1/1, 0/1 -> 3/4; recall 1, 1, 1/2, 0 -> 2.5/4;
    # F1 = 2tp / (predicted + actual): 1, 1, 2/3, 0 -> (8/3)/4.
    got = falcon("IMG_CLS", labels(["farmland, farmland", "Airport.", "dock", "harbor"]),
                 labels(["farmland", "airport", "harbor", "harbor"]))
    assert got["accuracy"] == 0.75 and got["multi_label"] == 0
    assert got["precision"] == pytest.approx(0.75)
    assert got["recall"] == pytest.approx(0.625)
    assert got["f1"] == pytest.approx(2 / 3)


def test_a_comma_in_any_reference_makes_every_score_a_set_overlap():
    # Per sample |pred & ref| / |pred | ref|: 2/2, 1/2, 1/1 -> accuracy (1 + 0.5 + 1) / 3.
    # precision |&|/|pred|: 1, 1, 1; recall |&|/|ref|: 1, 1/2, 1; F1 2|&|/(|pred|+|ref|): 1, 2/3, 1.
    got = falcon("IMG_CLS", labels(["river, farmland", "airport", "harbor"]),
                 labels(["farmland, river", "airport, road", "harbor"]))
    assert got["multi_label"] == 1
    assert got["accuracy"] == pytest.approx(2.5 / 3)
    assert got["precision"] == 1.0
    assert got["recall"] == pytest.approx(2.5 / 3)
    assert got["f1"] == pytest.approx((2 + 2 / 3) / 3)


def test_falcon_normalises_case_and_full_stops_only():
    # "tennis-court" vs "tennis court": tiercel reads separators as spaces, Falcon compares the strings.
    preds, refs = labels(["Tennis-court", "Airport.", "a car<pad>"]), labels(["tennis court", "airport", "a car"])
    assert falcon("REG_CLS_HBB", preds, refs)["accuracy"] == pytest.approx(2 / 3)
    assert T.get("REG_CLS_HBB").metric(preds, refs)["accuracy"] == 1.0


def test_counts_are_exact_strings_after_dropping_full_stops():
    # Normalised preds "25", "3", "three", "4" against "2", "3", "3", "4": right 2 and 4 -> accuracy 1/2.
    # Weighted F1 over the answers as classes (support = times in refs): "2" F1 0 (support 1),
    # "3" tp 1, predicted 1, actual 2 -> 2/3 (support 2), "4" -> 1 (support 1); "25", "three": support 0.
    # -> (0 * 1 + 2/3 * 2 + 1 * 1) / 4 = 7/12.
    preds = [T.get("IMG_CT").parse(t) for t in ("2.5", "3.", "three", "4")]
    refs = [Count(value=v, raw=str(v)) for v in (2, 3, 3, 4)]
    got = falcon("IMG_CT", preds, refs)
    assert got["accuracy"] == 0.5
    assert got["f1"] == pytest.approx(7 / 12)


def test_vqa_is_exact_match_and_weighted_f1():
    # "Yes" -> "yes" right, "no" vs "yes" wrong, "2" vs "2" right -> 2/3.
    # F1: "yes" tp 1, predicted 1, actual 2 -> 2/3 (support 2); "2" -> 1 (support 1); "no": support 0.
    got = falcon("IMG_VQA", labels(["Yes", "no", "2"]), labels(["yes", "yes", "2"]))
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx((2 / 3 * 2 + 1) / 3)


# --- captions -----------------------------------------------------------------------------------------------

def test_captions_are_scored_with_predictions_in_the_reference_slot():
    # Falcon passes (predictions, references) to compute_score(gts, res): the reference "a plane on a runway"
    # is the candidate and the prediction "a plane" its reference. Clipped unigram matches: "a" once, "plane"
    # once -> 2 of the candidate's 5 words; candidate longer than its reference, so no brevity penalty:
    # BLEU-1 = 2/5. The other way round (tiercel) it is 2/2 times exp(1 - 5/2).
    pred, ref = labels(["a plane"], Caption), labels(["A plane on a runway"], Caption)
    assert falcon("IMG_CAP", pred, ref)["bleu1"] == pytest.approx(0.4, abs=1e-9)
    assert T.get("IMG_CAP").metric(pred, ref)["bleu1"] == pytest.approx(math.exp(-1.5), abs=1e-9)


def test_caption_words_keep_their_punctuation():
    # Untokenised: "runway." is not "runway". 4 of 5 candidate words match -> BLEU-1 4/5 (equal lengths).
    got = falcon("IMG_CAP", labels(["a plane on a runway"], Caption), labels(["A plane on a runway."], Caption))
    assert got["bleu1"] == pytest.approx(0.8, abs=1e-9)


# --- boxes and quads (in bins) -------------------------------------------------------------------------------

def test_hbb_ranks_by_iou_where_tiercel_keeps_generation_order():
    # References A = [0, 0, 9, 9] and B = [20, 20, 29, 29]. The model first answers a box far from both, then A.
    # Falcon ranks by IoU: A first (TP), then the stray box (FP): precision 1 at recall 1/2 -> AP 1/2.
    # In generation order the FP comes first: precision 1/2 at recall 1/2 -> AP 1/4.
    refs = parsed("REG_DET_HBB", [box(0, 0, 9, 9) + box(20, 20, 29, 29)])
    preds = parsed("REG_DET_HBB", [box(50, 50, 59, 59) + box(0, 0, 9, 9)])
    assert falcon("REG_DET_HBB", preds, refs)["ap50"] == pytest.approx(0.5)
    assert T.get("REG_DET_HBB").metric(preds, refs)["ap50"] == pytest.approx(0.25)


def test_hbb_matches_with_the_voc_plus_one_convention():
    # Reference bins [0, 0, 9, 9] is 10 x 10 under VOC's +1; the prediction [0, 0, 4, 9] is 5 x 10:
    # IoU 50 / 100 = 0.5, a match at 0.5 -> AP 1. Without the +1 it is 4 * 9 / 81 = 0.44, no match.
    refs, preds = parsed("REG_DET_HBB", [box(0, 0, 9, 9)]), parsed("REG_DET_HBB", [box(0, 0, 4, 9)])
    assert falcon("REG_DET_HBB", preds, refs)["ap50"] == 1.0
    assert T.get("REG_DET_HBB").metric(preds, refs)["ap50"] == 0.0


def test_hbb_duplicates_are_false_positives():
    # Two copies of A and one stray box, against A and B: TP, FP (A used), FP -> recall 1/2 at precision 1,
    # then no more recall -> AP 1/2.
    refs = parsed("REG_DET_HBB", [box(0, 0, 9, 9) + box(20, 20, 29, 29)])
    preds = parsed("REG_DET_HBB", [box(0, 0, 9, 9) * 2 + box(50, 50, 59, 59)])
    assert falcon("REG_DET_HBB", preds, refs)["ap50"] == pytest.approx(0.5)


def test_hbb_regex_drops_a_box_with_a_space_inside():
    refs = parsed("REG_DET_HBB", [box(0, 0, 9, 9)])
    preds = [Boxes(boxes=[], raw="<box><0> <0><9><9></box>")]
    assert falcon("REG_DET_HBB", preds, refs)["ap50"] == 0.0


def test_grounding_accuracy_counts_every_box():
    # Record 1: reference A, answers A and a stray box -> TP 1, FP 1. Record 2: reference A, no answer -> FN 1.
    # Accuracy@0.5 = TP / (FN + predictions) = 1 / (1 + 2); FAR = FP / (FP + TP + FN) = 1/3.
    # Ranked by IoU: A (0.9988, TP), stray (0, FP): precision 1 at recall 1/2 -> AP 1/2; recall 1/2, precision 1/2.
    # tiercel's acc50 scores the first box of each answer: (1 + 0) / 2.
    refs = parsed("REG_VG", [box(0, 0, 9, 9)] * 2)
    preds = parsed("REG_VG", [box(0, 0, 9, 9) + box(50, 50, 59, 59), ""])
    got = falcon("REG_VG", preds, refs)
    assert got["acc50"] == pytest.approx(1 / 3) and got["far50"] == pytest.approx(1 / 3)
    assert got["ap50"] == pytest.approx(0.5)
    assert got["recall50"] == 0.5 and got["precision50"] == 0.5
    assert T.get("REG_VG").metric(preds, refs)["acc50"] == 0.5


def test_grounding_iou_adds_a_tenth_to_the_union():
    # [0, 0, 10, 10] vs [0, 0, 10, 5] in bins: 50 / (100 + 50 - 50 + 0.1) = 0.4995 < 0.5 -> no hit at 0.5,
    # a hit at 0.4.
    got = falcon("REG_VG", parsed("REG_VG", [box(0, 0, 10, 5)]), parsed("REG_VG", [box(0, 0, 10, 10)]))
    assert got["acc50"] == 0.0 and got["acc40"] == 1.0


def test_obb_self_intersecting_quad_scores_zero():
    pytest.importorskip("shapely")
    square = quad(100, 100, 200, 100, 200, 200, 100, 200)
    bow_tie = quad(100, 100, 200, 100, 100, 200, 200, 200)  # same corners, crossed edges
    rotated = quad(200, 100, 200, 200, 100, 200, 100, 100)  # same square, another starting corner
    refs = parsed("REG_DET_OBB", [square])
    assert falcon("REG_DET_OBB", parsed("REG_DET_OBB", [bow_tie]), refs)["ap50"] == 0.0
    assert falcon("REG_DET_OBB", parsed("REG_DET_OBB", [rotated]), refs)["ap50"] == 1.0
    # half the square: IoU 1/2 -> a hit at 0.5, none at 0.6
    half = falcon("REG_DET_OBB", parsed("REG_DET_OBB", [quad(100, 100, 150, 100, 150, 200, 100, 200)]), refs)
    assert half["ap50"] == 1.0 and half["ap60"] == 0.0


# --- polygons -----------------------------------------------------------------------------------------------

def test_segmentation_skips_samples_with_no_polygon():
    pytest.importorskip("pycocotools")
    square = poly(100, 100, 500, 100, 500, 500, 100, 500)
    refs, preds = parsed("PIX_SEG", [square] * 2, (100, 100)), parsed("PIX_SEG", [square, ""], (100, 100))
    got = falcon("PIX_SEG", preds, refs, [(100, 100)] * 2)
    assert got["miou"] == 1.0 and got["scored"] == 1  # the empty answer is left out, not scored 0
    assert T.get("PIX_SEG").metric(preds, refs, [(100, 100)] * 2)["miou"] == pytest.approx(0.5, abs=0.01)


def test_segmentation_canvas_is_the_crop_or_a_square_past_the_largest_coordinate():
    pytest.importorskip("pycocotools")
    # Frame 100 x 100: bins 100..500 are pixels 10.05..50.05, bins 100..300 pixels 10.05..30.05.
    # Without a crop the canvas is a 55 x 55 square (50.05 + 5): IoU = 20^2 / 40^2 = 1/4.
    # With the crop [0, 0, 30, 30] the canvas is 30 x 30 and cuts both masks to the same 20 x 20 square: IoU 1.
    refs = parsed("PIX_SEG", [poly(100, 100, 500, 100, 500, 500, 100, 500)], (100, 100))
    preds = parsed("PIX_SEG", [poly(100, 100, 300, 100, 300, 300, 100, 300)], (100, 100))
    assert falcon("PIX_SEG", preds, refs, [(100, 100)])["miou"] == pytest.approx(0.25, abs=0.01)
    assert falcon("PIX_SEG", preds, refs, [(100, 100)], crops=[[0, 0, 30, 30]])["miou"] == pytest.approx(1.0, abs=0.01)


def test_segmentation_square_side_comes_from_the_part_that_sorts_last():
    pytest.importorskip("pycocotools")
    # Frame 100 x 100 (bin b is pixel (b + 0.5) / 10). Both answers hold A, a square over 60.05..70.05, first;
    # then the reference holds B (10.05..90.05), the prediction C (10.05..80.05). Falcon's nested max() takes the
    # part that is largest as a list, A (its first value 60.05 beats 10.05), so the square canvas has side
    # int(70.05 + 5) = 75: B and C are both cut to 10.05..75 and the masks are equal -> IoU 1.
    # (On a canvas past the largest coordinate it would be 70^2 / 80^2 = 0.77.)
    a = poly(600, 600, 700, 600, 700, 700, 600, 700)
    refs = parsed("PIX_SEG", [a + poly(100, 100, 900, 100, 900, 900, 100, 900)], (100, 100))
    preds = parsed("PIX_SEG", [a + poly(100, 100, 800, 100, 800, 800, 100, 800)], (100, 100))
    assert falcon("PIX_SEG", preds, refs, [(100, 100)])["miou"] == 1.0


def test_change_polygons_are_dequantised_on_the_canvas():
    pytest.importorskip("pycocotools")
    # One frame is 100 x 100, the canvas 200 x 200: bin 100 is pixel 20.1 and bin 200 pixel 40.1 of the canvas.
    # The prediction covers x 20.1..40.1, the reference x 20.1..60.1 (same y): IoU 20 / 40 = 1/2.
    refs = parsed("PIX_CHG", [poly(100, 100, 300, 100, 300, 200, 100, 200)], (100, 100))
    preds = parsed("PIX_CHG", [poly(100, 100, 200, 100, 200, 200, 100, 200)], (100, 100))
    assert falcon("PIX_CHG", preds, refs, [(100, 100)])["miou"] == pytest.approx(0.5, abs=0.02)


# --- answer text, headlines, errors -------------------------------------------------------------------------

def test_results_without_raw_text_are_written_in_bins_first():
    refs = parsed("REG_DET_HBB", [box(0, 0, 9, 9)])
    by_hand = [Boxes(boxes=[[0.5, 0.5, 9.5, 9.5]])]  # pixels of a 1000 x 1000 image: bins 0, 0, 9, 9
    with pytest.raises(TaskError, match=r"REG_DET_HBB: preds\[0\] has no answer text .* pass image_sizes"):
        falcon("REG_DET_HBB", by_hand, refs)
    assert falcon("REG_DET_HBB", by_hand, refs, [(1000, 1000)])["ap50"] == 1.0


def test_florence_bins_are_read_as_falcon_bins():
    refs = parsed("REG_DET_HBB", [box(0, 0, 9, 9)])
    preds = [Boxes(boxes=[], raw="<loc_0><loc_0><loc_9><loc_9>")]
    assert falcon("REG_DET_HBB", preds, refs)["ap50"] == 1.0


def test_headlines_and_average_follow_the_protocol():
    spec = T.get("REG_VG")
    assert spec.headline_of("tiercel") == "acc50" and spec.headline_of("falcon") == "ap50"
    per_task = {"REG_VG": {"acc50": 0.2, "ap50": 0.6}, "IMG_CLS": {"accuracy": 1.0}}
    assert T.average_headline(per_task) == pytest.approx(0.6)
    assert T.average_headline(per_task, "falcon") == pytest.approx(0.8)


def test_unknown_protocol_is_one_line():
    with pytest.raises(TaskError, match=r"^unknown evaluation protocol 'coco'; valid protocols: tiercel, falcon$"):
        T.get("IMG_CLS").metric(labels(["a"]), labels(["a"]), protocol="coco")


def test_evaluate_reports_both_protocols(tmp_path):
    from tests.unit.test_eval_core import Oracle
    from tiercel.data.synth import generate

    generate(tmp_path, n=60, size=64, seed=1, workers=1)
    data = tmp_path / "test.json"
    report = evaluate(Oracle(data, tmp_path), data, tmp_path, tasks=["REG_VG", "IMG_CLS"], protocol="both")
    assert report.protocol == "tiercel" and set(report.protocols) == {"tiercel", "falcon"}
    assert report.headlines_of("falcon") == {"REG_VG": 1.0, "IMG_CLS": 1.0}  # the references answer themselves
    out = report.to_dict()
    assert out["protocol"] == "tiercel" and out["headline"]["REG_VG"]["metric"] == "acc50"
    assert out["protocols"]["falcon"]["headline"]["REG_VG"]["metric"] == "ap50"
    with pytest.raises(TaskError, match="valid protocols: tiercel, falcon, both"):
        evaluate(Oracle(data, tmp_path), data, tmp_path, protocol="nope")


def test_a_missing_library_is_named_before_any_work(monkeypatch):
    import importlib.util

    from tiercel.tasks import falcon as F

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shapely" else real(name, *a))
    with pytest.raises(TaskError, match=r"^the falcon protocol scores REG_DET_OBB with shapely: pip install 'tiercel\[eval\]'$"):
        F.check_dependencies(["IMG_CLS", "REG_DET_OBB"])
    F.check_dependencies(["IMG_CLS", "PIX_SEG"])  # pycocotools is there; nothing else needed
