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
