"""Config: TOML tables and `--set` overrides build frozen dataclasses; mistakes are named."""

from __future__ import annotations

import pytest

from train.config import ConfigError, ModelConfig, ObjectiveConfig, apply_overrides, from_dict, to_dict


def test_overrides_reach_nested_fields_and_parse_toml_values() -> None:
    data = apply_overrides(
        {"image": {"kind": "vit"}}, ["image.width=64", "embed_dim=128", "text.pooling=mean", "temp_init=0.05"]
    )
    cfg = from_dict(ModelConfig, data)
    assert cfg.image.width == 64 and cfg.embed_dim == 128 and cfg.text.pooling == "mean"
    assert cfg.temp_init == 0.05


def test_round_trip_through_dict() -> None:
    cfg = from_dict(ModelConfig, {"image": {"mean": [0.5, 0.5, 0.5]}, "codebook_size": 64})
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    assert cfg.image.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"embed_dimm": 3}, "unknown config key(s) embed_dimm"),
        ({"image": {"kind": "resnet"}}, "image.kind"),
        ({"embed_dim": "large"}, "embed_dim: expected int"),
        ({"image": {"mean": [0.5]}}, "image.mean: expected 3 values"),
    ],
)
def test_mistakes_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(ModelConfig, data)


def test_preset_must_be_known() -> None:
    with pytest.raises(ConfigError, match="preset"):
        from_dict(ObjectiveConfig, {"preset": "clip"})
