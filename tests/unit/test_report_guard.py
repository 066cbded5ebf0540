"""The report's guard table: a pass at low token agreement says so in its verdict."""

from __future__ import annotations

from tiercel.report import markdown


def _guard(agreement: float, caution: str | None) -> dict:
    return {"run": True, "passed": True, "token_agreement": agreement, "drop": 0.01, "drop_bound": 0.02,
            "attempts": [{}], **({"caution": caution} if caution else {})}


def test_a_cautioned_pass_is_marked_in_the_guard_table():
    data = {"rows": {}, "guard": {"student-int4-weight-only": _guard(0.84, "passed at token agreement 0.840 ..."),
                                  "student-int8-dynamic": _guard(0.97, None)}}
    table = markdown(data, "demo").split("## Accuracy guard")[1]
    int4 = next(line for line in table.splitlines() if line.startswith("| student-int4"))
    int8 = next(line for line in table.splitlines() if line.startswith("| student-int8"))
    assert int4.endswith("passed (1 attempt(s)); caution: low token agreement, val decides little |")
    assert int8.endswith("passed (1 attempt(s)) |")


def _row(headline: dict, average: float, falcon: dict | None = None) -> dict:
    return {"bundle": "b", "average": average, "headline": headline, "protocol": "tiercel", "falcon": falcon,
            "size_mb": 1.0, "stages_ms": {}, "tasks_ms": {}, "tokens_per_s": None, "estimates": {}}


def test_the_per_task_table_names_its_protocol_and_shows_falcons_beside_it():
    falcon = {"average": 0.9, "headline": {"REG_VG": 0.9}}
    data = {"rows": {"teacher": _row({"REG_VG": 0.25}, 0.25, falcon)}, "guard": {}}
    text = markdown(data, "demo")
    ours = text.split("## Per task (headline metric x 100, tiercel protocol)")[1].split("##")[0]
    theirs = text.split("## Per task (headline metric x 100, falcon protocol)")[1].split("##")[0]
    assert "| REG_VG | acc50 | 25.0 |" in ours  # tiercel's headline: the first box's accuracy
    assert "| REG_VG | ap50 | 90.0 |" in theirs and "| average | | 90.0 |" in theirs  # Falcon's: its IoU-ranked AP


def test_the_roofline_table_shows_each_stage_against_its_bound():
    row = _row({}, 0.3)
    row["roofline"] = {"vision_encoder": {"precision": "int8-static", "bound": "compute", "peak": "int8", "bound_ms": 40.0,
                                          "measured_ms": 100.0},
                       "decode_token": {"precision": "int8-static", "bound": "memory", "peak": "int8", "bound_ms": 5.0,
                                        "measured_ms": 11.0}}
    peaks = {"bandwidth_gbs": 22.5, "matmul_gflops": 101.0, "int8_matmul_gflops": 405.0, "bf16_matmul_gflops": None}
    text = markdown({"rows": {"student-int8": row}, "guard": {}, "peaks": peaks}, "demo").split("## Against the roofline")[1]
    assert "(22.5 GB/s; matmul GFLOP/s fp32 101, int8 405); x bound = measured p50 / bound." in text
    assert "| student-int8 | vision_encoder | int8-static | compute int8 | 40.00 | 100.00 | 2.50x |" in text
    assert "| student-int8 | decode_token | int8-static | memory | 5.00 | 11.00 | 2.20x |" in text
    assert "## Against the roofline" not in markdown({"rows": {"t": _row({}, 0.3)}, "guard": {}}, "demo")
