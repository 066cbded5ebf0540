"""The pipeline report's paired section: each quantized student against the fp32 student, from the eval JSONs."""

from __future__ import annotations

import json

from tiercel.report import _paired, markdown
from tiercel.tasks import Boxes

HIT, MISS = Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[50, 50, 60, 60]])


def _eval(path, right: list[bool], keep: bool = True):
    rows = [{"index": i, "tag": "REG_VG", "pred": (HIT if r else MISS).to_dict(), "truth": HIT.to_dict(),
             "size": [64, 64], "crop": []} for i, r in enumerate(right)]
    path.write_text(json.dumps({"predictions": rows if keep else []}))
    return path


def test_each_quantized_student_gets_its_paired_change_in_the_report(tmp_path):
    evals = {"student": _eval(tmp_path / "student.json", [True, True, True, False]),
             "student-int8-static": _eval(tmp_path / "int8.json", [True, True, False, False]),
             "student-int4-weight-only": _eval(tmp_path / "int4.json", [True, True, True, False]),
             "teacher": _eval(tmp_path / "teacher.json", [True] * 4)}
    paired = _paired(evals)
    assert set(paired) == {"student-int8-static", "student-int4-weight-only"}  # not the teacher, not the student
    text = markdown({"rows": {}, "guard": {}, "paired": paired}, "demo").split("## Quantized vs fp32 student")[1]
    row = next(line for line in text.splitlines() if line.startswith("| REG_VG"))
    high = 100 * paired["student-int8-static"]["per_task"]["REG_VG"]["relative_ci"][1]
    assert row.startswith("| REG_VG | -33.3% [") and f"{high:+.1f}%]" in row  # one answer lost: -1/3
    assert row.endswith("| +0.0% [+0.0%, +0.0%] |")  # int4 answered as fp32: not bold, the interval holds 0
    assert "| average | " in text


def test_no_paired_section_without_kept_predictions_and_a_mismatch_is_named(tmp_path):
    assert _paired({"student": _eval(tmp_path / "s.json", [True], keep=False),
                    "student-int8-static": _eval(tmp_path / "q.json", [True])}) == {}
    got = _paired({"student": _eval(tmp_path / "s2.json", [True, False]),
                   "student-int8-static": _eval(tmp_path / "q2.json", [True])})
    assert "lacks 1 record(s)" in got["student-int8-static"]["error"]
    text = markdown({"rows": {}, "guard": {}, "paired": got}, "demo")
    assert "- student-int8-static: " in text and "lacks 1 record(s)" in text
    assert "## Quantized vs fp32 student" not in markdown({"rows": {}, "guard": {}}, "demo")
