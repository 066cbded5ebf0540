"""Original <-> native key and config mapping, checked against the names in FALCON.md."""

import pytest

from tiercel.errors import CheckpointError
from tiercel.models.layout import is_original_layout, native_to_original, original_config_to_native


@pytest.mark.parametrize(
    "native, original",
    [
        ("model.vision_tower.convs.0.conv.weight", "vision_tower.convs.0.proj.weight"),
        ("model.vision_tower.convs.2.norm.bias", "vision_tower.convs.2.norm.bias"),
        ("model.vision_tower.blocks.2.3.spatial_block.conv1.weight", "vision_tower.blocks.2.3.spatial_block.conv1.fn.dw.weight"),
        ("model.vision_tower.blocks.2.3.spatial_block.norm1.weight", "vision_tower.blocks.2.3.spatial_block.window_attn.norm.weight"),
        ("model.vision_tower.blocks.0.0.spatial_block.window_attn.qkv.bias", "vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv.bias"),
        ("model.vision_tower.blocks.0.0.spatial_block.window_attn.proj.weight", "vision_tower.blocks.0.0.spatial_block.window_attn.fn.proj.weight"),
        ("model.vision_tower.blocks.1.0.spatial_block.conv2.bias", "vision_tower.blocks.1.0.spatial_block.conv2.fn.dw.bias"),
        ("model.vision_tower.blocks.1.0.spatial_block.norm2.weight", "vision_tower.blocks.1.0.spatial_block.ffn.norm.weight"),
        ("model.vision_tower.blocks.1.0.spatial_block.ffn.fc1.weight", "vision_tower.blocks.1.0.spatial_block.ffn.fn.net.fc1.weight"),
        ("model.vision_tower.blocks.3.0.channel_block.norm1.bias", "vision_tower.blocks.3.0.channel_block.channel_attn.norm.bias"),
        ("model.vision_tower.blocks.3.0.channel_block.channel_attn.qkv.weight", "vision_tower.blocks.3.0.channel_block.channel_attn.fn.qkv.weight"),
        ("model.vision_tower.blocks.3.0.channel_block.ffn.fc2.bias", "vision_tower.blocks.3.0.channel_block.ffn.fn.net.fc2.bias"),
        ("model.multi_modal_projector.image_projection.weight", "image_projection"),
        ("model.multi_modal_projector.image_proj_norm.weight", "image_proj_norm.weight"),
        ("model.multi_modal_projector.image_position_embed.row_embeddings.weight", "image_pos_embed.row_embeddings.weight"),
        ("model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed", "visual_temporal_embed.pos_idx_to_embed"),
        ("model.language_model.encoder.layers.0.self_attn.k_proj.weight", "language_model.model.encoder.layers.0.self_attn.k_proj.weight"),
        ("model.language_model.shared.weight", "language_model.model.shared.weight"),
        ("lm_head.weight", "language_model.lm_head.weight"),
    ],
)
def test_native_to_original_names(native, original):
    assert native_to_original(native) == original


def test_layout_detection():
    assert is_original_layout({"vision_config": {"dim_embed": [8]}}, [])
    assert is_original_layout({}, ["vision_tower.convs.0.proj.weight"])
    assert not is_original_layout({"vision_config": {"embed_dim": [8]}}, ["model.vision_tower.convs.0.conv.weight"])


def _original_config():
    return {
        "vision_config": {"dim_embed": [16, 32], "depths": [1, 1], "num_heads": [1, 2], "num_groups": [1, 2], "projection_dim": 64,
                          "visual_temporal_embedding": {"max_temporal_embeddings": 100}, "image_pos_embed": {"max_pos_embeddings": 50}},
        "text_config": {"model_type": "florence2_language", "vocab_size": 100, "d_model": 64, "encoder_layers": 1, "decoder_layers": 1,
                        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
                        "max_position_embeddings": 128},
    }


def test_original_config_fields_are_renamed():
    native = original_config_to_native(_original_config())
    assert native["vision_config"]["embed_dim"] == [16, 32]
    assert native["vision_config"]["max_temporal_embeddings"] == 100
    assert native["vision_config"]["max_position_embeddings"] == 50
    assert native["text_config"]["model_type"] == "bart"


def test_original_config_missing_field_is_named():
    cfg = _original_config()
    del cfg["text_config"]["d_model"]
    with pytest.raises(CheckpointError, match=r"^config.json: text_config.d_model is missing$"):
        original_config_to_native(cfg)


def test_projection_must_match_text_width():
    cfg = _original_config()
    cfg["vision_config"]["projection_dim"] = 32
    with pytest.raises(CheckpointError, match="projection_dim 32 must equal text_config.d_model 64"):
        original_config_to_native(cfg)
