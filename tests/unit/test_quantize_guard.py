"""The accuracy guard's decision on hand-made generations: point drop, paired-bootstrap bound, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from tiercel.quantize.calibrate import Sample
from tiercel.quantize.guard import compare

WORDS = ["airport", "harbor"]


class Words:
    """Token id i decodes to WORDS[i]: a stand-in tokenizer for hand-made generations."""

    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids)


def samples(n: int = 40) -> list[Sample]:
    image = np.zeros((8, 8, 3), np.uint8)
    return [Sample("IMG_CLS", "", "airport", image, (8, 8)) for _ in range(n)]


def fp32_ids(n: int = 40) -> list[list[int]]:
    return [[0] if i < n // 2 else [1] for i in range(n)]  # right on the first half: accuracy 0.5


def test_identical_generations_pass_with_a_zero_bound():
    ids = fp32_ids()
    v = compare(Words(), samples(), ids, ids, max_drop=0.0)
    assert v.passed and v.drop == 0.0 and v.drop_bound == 0.0 and v.token_agreement == 1.0


def test_point_drop_is_relative_to_fp32():
    q = fp32_ids()
    q[0] = q[1] = [1]  # two right answers lost: accuracy 0.5 -> 0.45
    v = compare(Words(), samples(), fp32_ids(), q, max_drop=0.5, confidence=0)
    assert v.fp32_average == pytest.approx(0.5) and v.quantized_average == pytest.approx(0.45)
    assert v.drop == pytest.approx(0.1) and v.drop_bound is None and v.passed
    assert v.token_agreement == pytest.approx(38 / 40)


def test_flips_that_cancel_pass_on_the_point_drop_but_not_on_the_bound():
    q = fp32_ids()
    for i in range(4):  # 4 right answers lost, 4 wrong ones fixed: same accuracy, 8 of 40 answers changed
        q[i], q[20 + i] = [1], [0]
    point = compare(Words(), samples(), fp32_ids(), q, max_drop=0.01, confidence=0)
    assert point.drop == pytest.approx(0.0) and point.passed
    bounded = compare(Words(), samples(), fp32_ids(), q, max_drop=0.01, confidence=0.9)
    assert bounded.drop == pytest.approx(0.0) and not bounded.passed
    assert 0.05 < bounded.drop_bound < 0.5  # one resampled flip moves accuracy by 1/40 of 0.5, i.e. 5%
    assert "90% upper bound" in bounded.line()
    # the retry line says the bound missed, not the drop (which is 0 here)
    assert bounded.misses(0.01, 0.0) == (f"drop within max drop 1.00%, its 90% upper bound {bounded.drop_bound:.2%} "
                                         "over it (more val samples narrow the bound)")


def test_agreement_floor_applies_on_top_of_the_drop():
    q = fp32_ids()
    q[0], q[20] = [1], [0]
    v = compare(Words(), samples(), fp32_ids(), q, max_drop=1.0, min_agreement=0.99)
    assert v.drop == pytest.approx(0.0) and v.token_agreement == pytest.approx(0.95) and not v.passed
    assert v.misses(1.0, 0.99) == "token agreement under --min-agreement 0.990"  # what the retry line names
    q[1] = [1]  # a right answer lost as well: the drop misses too
    both = compare(Words(), samples(), fp32_ids(), q, max_drop=0.0, min_agreement=0.99, confidence=0)
    assert both.misses(0.0, 0.99) == "drop over the limit (max drop 0.00%) and token agreement under --min-agreement 0.990"


def test_a_pass_at_low_token_agreement_comes_with_a_caution():
    from tiercel.quantize.guard import caution

    q = fp32_ids()
    for i in range(3):  # 6 of 40 answers changed, cancelling: agreement 0.85, the point drop 0
        q[i], q[20 + i] = [1], [0]
    low = compare(Words(), samples(), fp32_ids(), q, max_drop=0.5, confidence=0)
    assert low.passed and low.token_agreement == pytest.approx(0.85)
    assert caution(low).startswith("passed at token agreement 0.850 (< 0.9)") and "--n-val" in caution(low)
    q[2], q[22] = [0], [1]  # 4 changed: agreement 0.9, no caution; a failed verdict gets none either
    assert caution(compare(Words(), samples(), fp32_ids(), q, max_drop=0.5, confidence=0)) is None
    assert caution(compare(Words(), samples(), fp32_ids(), q, max_drop=0.5, min_agreement=1.0)) is None


def test_a_refusal_decided_by_the_bound_alone_says_more_val_samples_would_narrow_it():
    from tiercel.quantize.guard import bound_hint

    attempts = [{"drop": 0.0307, "drop_bound": 0.0556, "confidence": 0.9, "token_agreement": 0.91},  # point misses too
                {"drop": 0.0051, "drop_bound": 0.0125, "confidence": 0.9, "token_agreement": 0.95}]  # only the bound
    assert bound_hint(attempts, 0.01, 0.0, 224) == ("; attempt 2's point drop 0.51% was within max drop, its 90% bound "
                                               "1.25% was not: more val samples narrow the bound (--n-val, 224 now; or --n-val-max)")
    assert bound_hint(attempts[:1], 0.01, 0.0, 224) == ""
    assert bound_hint(attempts, 0.01, 0.96, 224) == ""  # agreement failed too: more samples would not pass it
    assert bound_hint([{"drop": 0.005, "drop_bound": None, "confidence": 0.0}], 0.01, 0.0, 224) == ""  # --confidence 0


def two_tasks(n: int = 40) -> list[Sample]:
    """n IMG_CLS samples, then n REG_CLS_HBB ones, every reference "airport"."""
    image = np.zeros((8, 8, 3), np.uint8)
    return [Sample(tag, "", "airport", image, (8, 8)) for tag in ("IMG_CLS", "REG_CLS_HBB") for _ in range(n)]


def test_a_task_whose_loss_is_resolved_is_refused_while_the_average_holds():
    fp32 = fp32_ids() + fp32_ids()  # both tasks at accuracy 0.5
    q = [list(x) for x in fp32]
    for i in range(10, 20):  # REG_CLS_HBB loses half its right answers: 0.5 -> 0.25, a 50% drop of that task
        q[40 + i] = [1]
    v = compare(Words(), two_tasks(), fp32, q, max_drop=0.3, max_task_drop=0.1)
    assert v.drop == pytest.approx(0.25)  # the average: (1.0 - 0.75) / 1.0, within max drop 0.3
    assert v.per_task["REG_CLS_HBB"]["drop"] == pytest.approx(0.5) and v.per_task["IMG_CLS"]["drop_low"] == 0.0
    assert 0.1 < v.per_task["REG_CLS_HBB"]["drop_low"] < 0.5  # the low end of its resampled drops
    assert v.task_misses == ["REG_CLS_HBB"] and not v.passed
    assert v.misses(0.3, 0.0).startswith("drop within max drop 30.00%, its 90% upper bound")  # the bound missed too
    assert v.misses(0.3, 0.0).endswith(f"a task's drop over max task drop 10.00% (REG_CLS_HBB at least "
                                       f"{v.per_task['REG_CLS_HBB']['drop_low']:.1%})")
    assert not v.bound_missed_alone(0.3, 0.0)  # a resolved loss: more val samples would not pass it
    without = compare(Words(), two_tasks(), fp32, q, max_drop=0.3)  # no floor given: the average decides alone
    assert without.task_misses == [] and without.max_task_drop is None and "drop_low" not in without.per_task["IMG_CLS"]


def test_a_task_loss_the_bootstrap_cannot_resolve_is_not_refused():
    fp32 = fp32_ids() + fp32_ids()
    q = [list(x) for x in fp32]
    q[40] = [1]  # one right answer lost: REG_CLS_HBB 0.5 -> 0.475, a 5% point drop, over a 1% floor
    v = compare(Words(), two_tasks(), fp32, q, max_drop=1.0, max_task_drop=0.01)
    assert v.per_task["REG_CLS_HBB"]["drop"] == pytest.approx(0.05)
    assert v.per_task["REG_CLS_HBB"]["drop_low"] == 0.0  # a third of the resamples leave that sample out
    assert v.passed and v.task_misses == []
    point = compare(Words(), two_tasks(), fp32, q, max_drop=1.0, max_task_drop=0.01, confidence=0)
    assert point.passed and point.max_task_drop is None  # no bootstrap, no per-task floor


def test_a_task_with_few_val_samples_is_not_checked():
    from tiercel.quantize.guard import MIN_TASK_SAMPLES

    def lost(m: int):  # IMG_CLS kept on 40 samples; REG_CLS_HBB, right on all m in fp32, loses every one
        tasks = two_tasks(40)[:40] + two_tasks(m)[m:]
        return compare(Words(), tasks, [[0]] * (40 + m), [[0]] * 40 + [[1]] * m, max_drop=1.0, max_task_drop=0.01)

    few = lost(MIN_TASK_SAMPLES - 1)
    assert few.per_task["REG_CLS_HBB"]["delta"] == -1.0 and "drop_low" not in few.per_task["REG_CLS_HBB"]
    assert few.passed and few.task_misses == []
    enough = lost(MIN_TASK_SAMPLES)  # one more sample: checked, and every resample loses it all
    assert enough.per_task["REG_CLS_HBB"]["drop_low"] == 1.0 and enough.task_misses == ["REG_CLS_HBB"]


def test_a_task_at_fp32_zero_has_no_relative_drop_to_check():
    fp32 = fp32_ids() + [[1]] * 40  # REG_CLS_HBB: every fp32 answer wrong
    q = [list(x) for x in fp32]
    v = compare(Words(), two_tasks(), fp32, q, max_drop=0.0, max_task_drop=0.0)
    assert v.passed and "drop_low" not in v.per_task["REG_CLS_HBB"] and v.per_task["IMG_CLS"]["drop_low"] == 0.0


def test_a_refused_task_is_not_a_bound_that_more_samples_narrow():
    from tiercel.quantize.guard import bound_hint

    only_bound = {"drop": 0.0051, "drop_bound": 0.0125, "confidence": 0.9, "token_agreement": 0.95}
    assert bound_hint([only_bound], 0.01, 0.0, 224) != ""
    assert bound_hint([{**only_bound, "task_misses": ["PIX_CHG"]}], 0.01, 0.0, 224) == ""


def test_the_task_floor_defaults_to_max_drop():
    from tiercel.errors import ConfigError
    from tiercel.quantize.settings import settings

    assert settings(max_drop=0.03).task_floor == 0.03
    assert settings(max_drop=0.03, max_task_drop=0.05).task_floor == 0.05
    with pytest.raises(ConfigError, match=r"^--max-task-drop: Input should be less than or equal to 1 \(got 2\.0\)$"):
        settings(option=lambda f: f"--{f.replace('_', '-')}", max_task_drop=2.0)
