"""Cross-attention K/V per item, shared by the item's beams (manifest `cross_kv: per_item`), against one copy per
beam (`per_row`, what bundles exported before the field hold): the same numbers, the same tokens."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.bundles import image, tiny_bundle  # noqa: E402

PROMPTS = ["Describe the image.", "Detect all airplane in the image.\nUse horizontal bounding boxes.",
           "Count the number of ship."]


@pytest.fixture(scope="module", params=["split", "merged"])
def layouts(request, tiny_model, tiny_tokenizer, tmp_path_factory):
    """(per_item bundle, the same bundle with the manifest of an older export: no cross_kv field)."""
    new = tiny_bundle(tiny_model, tiny_tokenizer, request.param, ("onnxruntime",))
    old = tmp_path_factory.mktemp("old") / request.param
    shutil.copytree(new, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest.pop("cross_kv") == "per_item"
    (old / "manifest.json").write_text(json.dumps(manifest))
    return new, old


def _mask_rows(model) -> list[int]:
    """Record the encoder_attention_mask rows every decoder call of `model` gets."""
    seen = []
    for name, session in model.sessions.items():
        if name.startswith("decoder"):
            def run(feeds, inner=session.run):
                seen.append(feeds["encoder_attention_mask"].shape[0])
                return inner(feeds)
            session.run = run
    return seen


@pytest.mark.parametrize("io_binding", [False, True])
def test_per_item_beam_search_gives_the_tokens_of_per_row(layouts, io_binding):
    import tiercel.runtime as rt

    new, old = (rt.load(path, io_binding=io_binding) for path in layouts)
    assert new.per_item and not old.per_item and old.bundle.manifest.cross_kv == "per_row"
    features = new.image_features(new.pixel_values(image(4)))
    for beams in (3, 1):
        rows = [] if io_binding else _mask_rows(new)
        want = old.generate_ids(features, PROMPTS, num_beams=beams, max_new_tokens=12)
        assert new.generate_ids(features, PROMPTS, num_beams=beams, max_new_tokens=12) == want
        if beams > 1 and not io_binding:
            assert set(rows) == {len(PROMPTS)}  # one mask row per prompt, not per beam
        for session in new.sessions.values():
            session.__dict__.pop("run", None)


def test_per_item_graphs_compute_what_per_row_feeds_give(bundle):
    """Shared K/V and K/V repeated per beam (items = rows) through the same graphs: the same logits and KV."""
    import tiercel.runtime as rt

    m = rt.load(bundle)
    shape = m.shape
    heads, d, layers = shape.attention_heads, shape.d_model, shape.decoder_layers
    rng = np.random.default_rng(0)
    items, beams, enc = 2, 3, shape.image_tokens + 5
    mask = np.ones((items, enc), np.int64)
    mask[1, -2:] = 0
    hidden = rng.standard_normal((items, enc, d), dtype=np.float32)
    embeds = rng.standard_normal((items * beams, 1, d), dtype=np.float32)
    rep = lambda a: np.repeat(a, beams, axis=0)  # noqa: E731
    first = m.sessions["decoder_model"]
    shared = first.run({"inputs_embeds": embeds, "encoder_attention_mask": mask, "encoder_hidden_states": hidden})
    per_row = first.run({"inputs_embeds": embeds, "encoder_attention_mask": rep(mask), "encoder_hidden_states": rep(hidden)})
    assert shared["present.0.encoder.key"].shape == (items, heads, enc, d // heads)
    for name, value in shared.items():
        np.testing.assert_allclose(value, per_row[name][::beams] if ".encoder." in name else per_row[name], atol=1e-6)
    past = {f"past_key_values.{k[len('present.'):]}": v for k, v in shared.items() if k.startswith("present.")}
    step = m.sessions["decoder_with_past_model"]
    feeds = {"inputs_embeds": embeds[::-1].copy(), "encoder_attention_mask": mask}
    got = step.run({**feeds, **past})
    want = step.run({**feeds, "encoder_attention_mask": rep(mask),
                     **{k: rep(v) if ".encoder." in k else v for k, v in past.items()}})
    assert got.keys() == want.keys() and len(got) == 1 + 2 * layers
    for name in got:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)


def test_export_writes_per_item_graphs_with_their_own_batch_axis(bundle):
    import onnx

    import tiercel.runtime as rt

    b = rt.read_bundle(bundle)
    assert b.manifest.cross_kv == "per_item"
    proto = onnx.load(str(bundle / "decoder_with_past_model.onnx"), load_external_data=False)
    axis0 = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input}
    assert axis0["inputs_embeds"] == axis0["past_key_values.0.decoder.key"] == "batch"
    assert axis0["encoder_attention_mask"] == axis0["past_key_values.0.encoder.key"] == "items"


def test_cross_kv_is_checked_like_every_manifest_field(bundle, tmp_path):
    from tiercel.errors import BundleError
    from tiercel.runtime.manifest import read_manifest

    manifest = json.loads((bundle / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "cross_kv": "per_beam"}))
    with pytest.raises(BundleError, match=r"manifest.json: cross_kv: Input should be 'per_row' or 'per_item'"):
        read_manifest(tmp_path / "manifest.json")
