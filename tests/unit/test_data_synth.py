"""The synthetic benchmark: deterministic, complete over tasks and splits, and its ground truth is right."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

import tiercel.tasks as T
from tiercel.data import iter_records, load_image
from tiercel.data.synth import OBJECT_CLASSES, SCENE_CLASSES, Knobs, generate, split_sizes
from tiercel.data.synth.layout import changed_twin, sample_scene
from tiercel.errors import ConfigError, DataError

SIZE, N, SEED = 96, 84, 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bench"
    meta = generate(out, n=N, size=SIZE, seed=SEED, workers=1)
    return out, meta


def _records(out):
    return {split: list(iter_records(out / f"{split}.json")) for split in ("train", "val", "test")}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(bench, tmp_path):
    out, _ = bench
    again = tmp_path / "again"
    generate(again, n=N, size=SIZE, seed=SEED, workers=2)
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    generate(other, n=N, size=SIZE, seed=SEED + 1, workers=1)
    assert (other / "train.json").read_bytes() != (out / "train.json").read_bytes()


def test_every_task_in_every_split_and_meta_agrees(bench):
    out, meta = bench
    records = _records(out)
    sizes = split_sizes(N)
    for split, recs in records.items():
        counts = Counter(r.tag for r in recs)
        assert set(counts) == set(T.TAGS), split
        assert len(recs) == sizes[split]
        assert meta["counts"][split] == {t: counts[t] for t in T.TAGS}
    assert meta["seed"] == SEED and meta["size"] == SIZE and meta["classes"] == list(OBJECT_CLASSES)
    assert json.loads((out / "meta.json").read_text()) == meta


def test_answers_parse_cleanly_and_reformat_to_the_same_text(bench):
    out, _ = bench
    for recs in _records(out).values():
        for r in recs:
            spec = T.get(r.tag)
            parsed = spec.parse(r.answer, image_size=(SIZE, SIZE))
            assert parsed.warnings == [], (r.tag, r.answer)
            assert spec.format(parsed, image_size=(SIZE, SIZE)) == r.answer
            read = spec.read_prompt(r.prompt, image_size=(SIZE, SIZE))
            assert spec.prompt(image_size=(SIZE, SIZE), **read) == r.prompt


def _points(result):
    if isinstance(result, T.Boxes):
        return [p for b in result.boxes for p in (b[:2], b[2:])]
    if isinstance(result, T.Quads):
        return [p for q in result.quads for p in q]
    if isinstance(result, T.Polygons):
        return [p for inst in result.polygons for part in inst for p in part]
    return []


def test_geometry_lies_inside_the_image(bench):
    out, _ = bench
    n_points = 0
    for recs in _records(out).values():
        for r in recs:
            spec = T.get(r.tag)
            points = _points(spec.parse(r.answer, image_size=(SIZE, SIZE)))
            region = spec.read_prompt(r.prompt, image_size=(SIZE, SIZE))["region"]
            if region is not None:
                points += [region[:2], region[2:]] if spec.needs_region == "box" else list(region)
            for x, y in points:
                assert 0 <= x <= SIZE and 0 <= y <= SIZE, (r.tag, r.answer)
            n_points += len(points)
    assert n_points > 100


def test_change_pairs_differ_inside_the_answer_polygons_only(bench):
    out, _ = bench
    pairs = [r for recs in _records(out).values() for r in recs if r.tag == "PIX_CHG"]
    assert pairs
    for r in pairs:
        before, after = (load_image(p).astype(int) for p in r.image_paths(out))
        diff = np.abs(before - after).sum(axis=2)
        polygons = T.get("PIX_CHG").parse(r.answer, image_size=(SIZE, SIZE)).polygons
        union = Image.new("L", (SIZE, SIZE), 0)
        for instance in polygons:
            mask = Image.new("L", (SIZE, SIZE), 0)
            ImageDraw.Draw(mask).polygon([tuple(p) for p in instance[0]], fill=1)
            ImageDraw.Draw(union).polygon([tuple(p) for p in instance[0]], fill=1)
            inside = diff[np.asarray(mask, bool)].mean()
            assert inside > 40, f"{r.images}: a changed object barely differs ({inside:.1f})"
        outside = diff[~np.asarray(union, bool)].mean()
        assert outside < 30, f"{r.images}: frames differ outside the changes ({outside:.1f})"


def test_many_scenes_cover_all_classes_without_overlaps():
    knobs, seen_scenes, seen_objects = Knobs(), set(), set()
    for i in range(120):
        scene = sample_scene(np.random.default_rng([5, i]), 128, knobs)
        seen_scenes.add(scene.scene_class)
        seen_objects.update(o.cls for o in scene.objects)
        for a in scene.objects:
            assert 0 <= min(a.hbb) and max(a.hbb) <= 128
            if a.cls == "ship":
                assert scene.ground_at(a.cx, a.cy) == "water"
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius
    assert seen_scenes == set(SCENE_CLASSES) and seen_objects == set(OBJECT_CLASSES)


def test_grid_knob_puts_every_object_centre_on_a_cell_centre():
    knobs, counts = Knobs(grid=4), []
    for i in range(40):
        rng = np.random.default_rng([7, i])
        scene = sample_scene(rng, 128, knobs)
        after, _ = changed_twin(rng, scene, knobs)
        for o in scene.objects + after.objects:
            assert o.cx in (16, 48, 80, 112) and o.cy in (16, 48, 80, 112)  # cells of 32 px, centres at 16 + 32k
            assert 0 <= min(o.hbb) and max(o.hbb) <= 128
        counts.append(len(scene.objects))
    assert np.mean(counts) >= 2  # the lattice still leaves room for objects


def test_changed_twin_always_changes_something():
    knobs = Knobs()
    for i in range(40):
        rng = np.random.default_rng([6, i])
        scene = sample_scene(rng, 128, knobs)
        after, changed = changed_twin(rng, scene, knobs)
        assert changed
        before_ids, after_ids = {id(o) for o in scene.objects}, {id(o) for o in after.objects}
        assert {id(o) for o in changed} == before_ids ^ after_ids


def test_refuses_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="n must be >= 42"):
        generate(tmp_path / "x", n=41, size=SIZE)
    with pytest.raises(ConfigError, match=r"size must be 64..4096 pixels \(got 32\)"):
        generate(tmp_path / "x", n=42, size=32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty; pass --overwrite"):
        generate(tmp_path / "full", n=42, size=64)
    with pytest.raises(DataError, match="holds files tiercel did not write"):
        generate(tmp_path / "full", n=42, size=64, overwrite=True, workers=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temp folders left behind


def test_data_package_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, tiercel.data, tiercel.data.synth; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _die(job, tmp):
    import os

    os._exit(3)  # as a worker killed by the OOM killer would: no exception, no result


def test_a_dead_worker_fails_the_run_instead_of_hanging_it(tmp_path, monkeypatch):
    import tiercel.data.synth.writer as W

    monkeypatch.setattr(W, "run_job", _die)
    with pytest.raises(DataError, match="synth: a worker process died"):
        generate(tmp_path / "out", n=42, size=64, workers=2)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [63, 4097])
def test_size_is_bounded(tmp_path, size):
    with pytest.raises(ConfigError, match=rf"synth: size must be 64..4096 pixels \(got {size}\)"):
        generate(tmp_path / "out", n=42, size=size)


def test_overwrite_replaces_only_a_folder_the_generator_wrote(tmp_path):
    generate(tmp_path / "bench", n=42, size=64, workers=1)
    generate(tmp_path / "bench", n=42, size=64, workers=1, seed=5, overwrite=True)  # its own: replaced
    assert json.loads((tmp_path / "bench" / "meta.json").read_text())["seed"] == 5
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.json").write_text("[]")
    with pytest.raises(DataError, match="holds files tiercel did not write .* not replaced even with --overwrite"):
        generate(theirs, n=42, size=64, workers=1, overwrite=True)
    assert (theirs / "labels.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "theirs"]  # no temporary folder left


def test_overwrite_keeps_a_folder_the_user_added_files_to(tmp_path):
    out = tmp_path / "bench"
    generate(out, n=42, size=64, workers=1)
    (out / "notes.txt").write_text("mine")
    (out / "images" / "drawing.svg").write_text("<svg/>")
    before = _files(out)
    with pytest.raises(DataError) as err:
        generate(out, n=42, size=64, workers=1, seed=1, overwrite=True)
    assert str(err.value) == (f"{out}: holds files the generator did not write (images/drawing.svg, notes.txt), so it is "
                              "not replaced even with --overwrite; move them out or choose another --out")
    assert _files(out) == before  # nothing replaced, nothing deleted
    (out / "notes.txt").unlink()
    (out / "images" / "drawing.svg").unlink()
    generate(out, n=42, size=64, workers=1, seed=1, overwrite=True)  # its own files only: replaced
    assert json.loads((out / "meta.json").read_text())["seed"] == 1
