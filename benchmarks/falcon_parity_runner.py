"""Score result files with Falcon's own evaluation code; the Falcon half of benchmarks/falcon_parity.py.

Runs in a Python that has Falcon's scorer dependencies (it never imports tiercel):

    FALCON_PYTHON falcon_parity_runner.py FALCON_DIR OUT.json RESULT.json [RESULT.json ...]

For each result file (the JSON that Falcon's single_gpu_inference_eval.py writes) it calls
`eval/evaluation.py:read_json_result` and writes {file: its "results" dict} to OUT.json. Falcon's files are
not edited; the harness patches below replace two functions in memory, and PATCHES describes them for the report.
Falcon's prints go to OUT.json's folder as falcon_stdout.log; its temporary files go to a fresh temp folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile

PATCHES = [
    {
        "where": "eval/src/captioning.py: calculate_meteor_scores",
        "what": "returns nan instead of nltk METEOR",
        "why": "METEOR needs nltk's wordnet corpus, which cannot be downloaded here; METEOR is not compared",
    },
    {
        "where": "eval/src/segmentation.py: polygon_to_mask(polygon, image_height, image_width)",
        "what": "rasterises every part (a flat [x, y, ...] list of 3 or more points) of every instance with "
        "pycocotools frPyObjects and ORs them into one uint8 mask of the canvas evaluate_segmentation "
        "computed; parts with fewer than 3 points are skipped (no area). evaluate_segmentation, its canvas "
        "rule and calculate_merged run unchanged",
        "why": "the original passes the instance -> part -> coordinates lists that Falcon's own inference writes "
        "straight to frPyObjects([polygon], h, w), which raises on them",
    },
]


def polygon_to_mask(polygon, image_height, image_width):
    """The patched eval/src/segmentation.py polygon_to_mask (see PATCHES)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    mask = np.zeros((int(image_height), int(image_width)), dtype=np.uint8)
    parts = [list(map(float, part)) for instance in polygon for part in instance if len(part) >= 6]
    if parts:
        masks = mask_utils.decode(mask_utils.frPyObjects(parts, image_height, image_width))
        mask = np.logical_or(mask, masks.any(axis=2)).astype(np.uint8)
    return mask


def plain(value):
    """numpy scalars and arrays -> JSON-able Python values; nan -> None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(falcon_dir: str, out: str, files: list[str]) -> None:
    falcon_eval = os.path.join(os.path.abspath(falcon_dir), "eval")
    files = [os.path.abspath(f) for f in files]
    out = os.path.abspath(out)
    sys.path.insert(0, falcon_eval)
    os.chdir(tempfile.mkdtemp(prefix="falcon_eval_"))  # evaluation.py writes its detection files under ./tmp/
    import evaluation
    from src import captioning, segmentation

    captioning.calculate_meteor_scores = lambda references, generated: float("nan")
    segmentation.polygon_to_mask = polygon_to_mask
    scores = {}
    with open(os.path.join(os.path.dirname(out), "falcon_stdout.log"), "w") as log:
        for path in files:
            with contextlib.redirect_stdout(log):
                scores[path] = plain(evaluation.read_json_result(path)["results"])
    with open(out, "w") as f:
        json.dump({"scores": scores, "patches": PATCHES, "versions": versions()}, f, indent=1)


def versions() -> dict:
    """Python and the scorer libraries' versions in this interpreter."""
    from importlib import metadata

    names = ("numpy", "scikit-learn", "pycocotools", "pycocoevalcap", "shapely", "rouge", "nltk")
    return {"python": sys.version.split()[0], **{n: metadata.version(n) for n in names}}


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
