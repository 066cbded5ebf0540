"""tiercel compare: two eval JSONs of the same records, per task, with paired intervals, on hand-made rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiercel.errors import DataError
from tiercel.evaluate.compare import compare_files, compare_rows, read_rows
from tiercel.tasks import Boxes, Label

HIT, MISS = Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[50, 50, 60, 60]])


def _row(index: int, tag: str, pred, truth) -> dict:
    return {"index": index, "tag": tag, "pred": pred.to_dict(), "truth": truth.to_dict(), "size": [64, 64], "crop": []}


def _file(path, rows) -> str:
    path.write_text(json.dumps({"predictions": rows}))
    return str(path)


def _grounding(right: list[bool], start: int = 0) -> list[dict]:
    return [_row(start + i, "REG_VG", HIT if r else MISS, HIT) for i, r in enumerate(right)]


def _labels(right: list[bool], start: int = 100) -> list[dict]:
    return [_row(start + i, "IMG_CLS", Label(text="harbor" if r else "forest"), Label(text="harbor"))
            for i, r in enumerate(right)]


def _keyed(rows: list[dict]) -> dict:
    return {(r["index"], r["tag"]): r for r in rows}


def test_the_change_and_its_paired_interval_by_hand():
    base_vg, other_vg = [True, True, True, False], [True, True, False, False]  # Acc@0.5 0.75 -> 0.5
    base_cls, other_cls = [True, False, True, False, True], [True, False, True, True, True]  # 0.6 -> 0.8
    base = _keyed(_grounding(base_vg) + _labels(base_cls))
    other = _keyed(_grounding(other_vg) + _labels(other_cls))
    got = compare_rows(base, other, rounds=400, seed=3)
    vg, cls = got["per_task"]["REG_VG"], got["per_task"]["IMG_CLS"]
    assert (vg["base"], vg["other"], vg["answers_changed"], vg["records"]) == (0.75, 0.5, 1, 4)
    assert vg["relative"] == pytest.approx(-1 / 3) and vg["change"] == pytest.approx(-0.25)
    assert cls["relative"] == pytest.approx(1 / 3) and cls["answers_changed"] == 1
    # by hand: each task draws from Generator([3, its task number]): IMG_CLS is task 1, REG_VG task 10
    rngs = {"IMG_CLS": np.random.default_rng([3, 1]), "REG_VG": np.random.default_rng([3, 10])}
    arrays = {t: (np.array(b), np.array(o)) for t, b, o in (("IMG_CLS", base_cls, other_cls), ("REG_VG", base_vg, other_vg))}
    draws = {t: [] for t in arrays}
    for _ in range(400):
        for t, (b, o) in arrays.items():
            pick = rngs[t].integers(0, len(b), len(b))
            draws[t].append((b[pick].mean(), o[pick].mean()))
    for t, name in (("IMG_CLS", "IMG_CLS"), ("REG_VG", "REG_VG")):
        d = np.array(draws[t])
        change = d[:, 1] - d[:, 0]
        ok = d[:, 0] > 0
        assert got["per_task"][name]["change_ci"] == pytest.approx(np.quantile(change, [0.025, 0.975]).tolist())
        assert got["per_task"][name]["relative_ci"] == pytest.approx(
            np.quantile(d[ok, 1] / d[ok, 0] - 1, [0.025, 0.975]).tolist())
    b_mean = (np.array(draws["IMG_CLS"])[:, 0] + np.array(draws["REG_VG"])[:, 0]) / 2
    o_mean = (np.array(draws["IMG_CLS"])[:, 1] + np.array(draws["REG_VG"])[:, 1]) / 2
    avg = got["average"]
    assert avg["base"] == pytest.approx((0.75 + 0.6) / 2) and avg["other"] == pytest.approx((0.5 + 0.8) / 2)
    assert avg["change_ci"] == pytest.approx(np.quantile(o_mean - b_mean, [0.025, 0.975]).tolist())
    # the paired interval of a one-answer change sits on one side of 0 with a zero end: never both signs
    low, high = vg["change_ci"]
    assert high == 0.0 and low < 0


def test_a_tasks_interval_does_not_depend_on_the_other_tasks():
    vg = _keyed(_grounding([True, True, False, True, False]))
    vg_other = _keyed(_grounding([True, False, False, True, True]))
    alone = compare_rows(vg, vg_other, rounds=200)["per_task"]["REG_VG"]
    both = compare_rows({**vg, **_keyed(_labels([True, False]))}, {**vg_other, **_keyed(_labels([False, False]))},
                        rounds=200)["per_task"]["REG_VG"]
    assert alone == both


def test_identical_evaluations_have_zero_change_and_zero_intervals(tmp_path):
    rows = _grounding([True, False, True, True, False, True])
    got = compare_files(_file(tmp_path / "a.json", rows), _file(tmp_path / "b.json", rows), rounds=50)
    vg = got["per_task"]["REG_VG"]
    assert vg["change"] == 0 and vg["change_ci"] == [0.0, 0.0] and vg["relative_ci"] == [0.0, 0.0]
    assert vg["answers_changed"] == 0 and got["base"].endswith("a.json")


def test_files_of_different_records_or_references_are_one_line_errors(tmp_path):
    a = _file(tmp_path / "a.json", _grounding([True, True, False]))
    with pytest.raises(DataError, match=r"b\.json: lacks 1 record\(s\) of .*a\.json \(first: record 2, REG_VG\); "
                                        r"compare evaluations of the same records"):
        compare_files(a, _file(tmp_path / "b.json", _grounding([True, True])))
    moved = _grounding([True, True, False])
    moved[1]["truth"] = MISS.to_dict()
    with pytest.raises(DataError, match=r"record 1 \(REG_VG\): the reference differs between"):
        compare_files(a, _file(tmp_path / "c.json", moved))
    with pytest.raises(DataError, match=r"d\.json: no 'predictions' rows; write it with `tiercel eval --json`"):
        read_rows(_file(tmp_path / "d.json", []))
    lacking = _grounding([True])
    del lacking[0]["truth"]
    with pytest.raises(DataError, match=r"e\.json: predictions\[0\] lacks 'truth'"):
        read_rows(_file(tmp_path / "e.json", lacking))
    (tmp_path / "f.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"f\.json: must hold a JSON object"):
        read_rows(tmp_path / "f.json")


def test_the_cli_prints_the_table_writes_json_and_fails_in_one_line(tmp_path, capsys):
    from tiercel.cli import main

    a = _file(tmp_path / "a.json", _grounding([True, True, True, False]))
    b = _file(tmp_path / "b.json", _grounding([True, True, False, False]))
    assert main(["compare", a, b, "--bootstrap", "100", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "REG_VG" in out and "-33.3%" in out and "average over 1 tasks" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["per_task"]["REG_VG"]["relative"] == pytest.approx(-1 / 3) and data["rounds"] == 100
    assert main(["compare", a, b, "--bootstrap", "10", "--json", str(tmp_path / "c.json")]) == 0  # its own: replaced
    assert json.loads((tmp_path / "c.json").read_text())["rounds"] == 10
    assert main(["compare", a, str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.json: missing" in err and err.count("\n") == 1
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    assert main(["compare", a, b, "--json", str(notes)]) == 1  # not tiercel's: never replaced
    err = capsys.readouterr().err
    assert "notes.json: exists and was not written by tiercel" in err and err.count("\n") == 1
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("field, value, message", [
    ("index", "abc", r"'index' must be a whole number \(got 'abc'\)"),
    ("index", None, r"'index' must be a whole number \(got None\)"),
    ("index", 1.5, r"'index' must be a whole number \(got 1\.5\)"),  # not cut to 1
    ("tag", ["REG_VG"], r"unknown task \['REG_VG'\]"),
    ("size", 64, r"'size' must be \[width, height\] in pixels \(got 64\)"),
    ("size", None, r"'size' must be \[width, height\] in pixels \(got None\)"),
    ("crop", "zz", r"'crop' must be a list of numbers or null \(got 'zz'\)"),
])
def test_a_row_with_a_field_of_the_wrong_type_is_one_line_naming_it(tmp_path, field, value, message):
    rows = _grounding([True, True])
    rows[1][field] = value
    with pytest.raises(DataError, match=rf"b\.json: predictions\[1\]: {message}; write it again with `tiercel eval --json`"):
        read_rows(_file(tmp_path / "b.json", rows))


def test_a_result_that_cannot_be_scored_names_its_file_and_record(tmp_path):
    from tiercel.tasks import Count

    a = _file(tmp_path / "a.json", _grounding([True, True]))
    wrong = _grounding([True, True])
    wrong[1]["pred"] = Count(value=3).to_dict()
    with pytest.raises(DataError, match=r"b\.json: record 1 \(REG_VG\): 'pred' is a Count, but REG_VG answers are Boxes"):
        compare_files(a, _file(tmp_path / "b.json", wrong))
    broken = _grounding([True, True])
    broken[0]["pred"] = {"type": "boxes", "boxes": ["abc"]}
    with pytest.raises(DataError, match=r"c\.json: record 0 \(REG_VG\): cannot be scored \(.*\); compare files written"):
        compare_files(a, _file(tmp_path / "c.json", broken))


def test_the_cli_refuses_to_write_over_a_file_it_compares_and_shows_points_from_zero(tmp_path, capsys):
    from tiercel.cli import main

    a = str(tmp_path / "a.json")  # as tiercel eval --json writes it: tiercel's own, so only its role protects it
    (tmp_path / "a.json").write_text(json.dumps({"tiercel": {"version": "0", "output": "eval"},
                                                 "predictions": _grounding([False, False, False, False])}))  # Acc@0.5 0
    b = _file(tmp_path / "b.json", _grounding([True, True, False, False]))  # 0.5: no relative change
    before = (tmp_path / "a.json").read_text()
    assert main(["compare", a, b, "--json", a]) == 1
    assert capsys.readouterr().err == (f"error: --json {a}: is the base file {a}, which the output would replace; "
                                       "choose another path\n")
    assert (tmp_path / "a.json").read_text() == before
    assert main(["compare", a, b, "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "+50.0 pts" in out and "[+0.0 pts, +100.0 pts]" in out  # 0 -> 0.5 has no relative change
