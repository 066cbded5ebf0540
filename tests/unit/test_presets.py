"""Model zoo: preset sizes match the published models, edge students land in their budgets."""

import pytest

from tiercel.errors import ConfigError
from tiercel.models.presets import PRESETS, get_preset, match_preset

torch = pytest.importorskip("torch")
from tiercel.models import build  # noqa: E402


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, low, high",
    [
        ("florence2-base", 231.4e6 * 0.995, 231.4e6 * 1.005),  # FALCON.md: 231.4M with transformers' classes
        ("falcon-base", 231.4e6 * 0.995, 231.4e6 * 1.005),
        ("florence2-large", 0.74e9, 0.80e9),  # about 0.77B
        ("tiercel-small", 60e6, 100e6),
        ("tiercel-nano", 15e6, 30e6),
        ("tiny", 1e5, 2e6),
    ],
)
def test_preset_parameter_counts(preset, low, high):
    assert low <= n_params(build(preset, device="meta")) <= high


def test_base_vision_emits_577_tokens_of_width_768():
    model = build("florence2-base", device="meta")
    feats = model.model.get_image_features(torch.zeros(1, 3, 768, 768, device="meta")).pooler_output
    assert tuple(feats.shape) == (1, 577, 768)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown model preset 'florence3'; choose one of: florence2-base"):
        get_preset("florence3")


def test_override_of_unknown_field_is_named():
    with pytest.raises(ConfigError, match="unknown field 'd_modle'"):
        get_preset("tiny", d_modle=32)


def test_invalid_shape_is_rejected_before_building():
    with pytest.raises(ConfigError, match="d_model 66 is not divisible by attention_heads 4"):
        get_preset("tiny", d_model=66)
    with pytest.raises(ConfigError, match="image_size must be a multiple of 32"):
        get_preset("tiny", image_size=100)


def test_match_preset_ignores_vocabulary():
    assert match_preset(get_preset("tiny", vocab_size=777)) == "tiny"
    assert match_preset(get_preset("tiny", d_model=32)) is None
    assert set(PRESETS) >= {"florence2-base", "florence2-large", "falcon-base", "falcon-large", "tiercel-small", "tiercel-nano", "tiny"}
