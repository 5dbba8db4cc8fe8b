"""Config: TOML tables and `--set` overrides build frozen dataclasses; mistakes are named."""

from __future__ import annotations

import pytest

from train.config import (
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    apply_overrides,
    from_dict,
    load_train_config,
    to_dict,
)


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


def test_help_lists_every_shipped_config_and_keys_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    from train.__main__ import CONFIGS, main
    from train.config import config_keys

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(p.stem in shown for p in CONFIGS.glob("*.toml"))
    assert main(["--keys"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(config_keys()) and any(k.startswith("run.stop_after_steps = 0") for k in listed)


def test_a_mistyped_key_names_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    from train.__main__ import main

    assert main(["--config", "tiny-shapes", "--set", "run.stop_after_step=3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean run.stop_after_steps?" in err and "python -m train --keys" in err


def test_without_torch_training_and_export_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from export.__main__ import main as export_main
    from train.__main__ import main as train_main

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else found(name, *a)
    )
    assert train_main(["--config", "tiny-shapes"]) == 2
    assert (
        capsys.readouterr().err.strip() == 'error: training needs the train extra: pip install -e ".[train]"'
    )
    assert export_main(["model.pt", "--out", "bundle"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export needs torch:") and "\n" not in err


def test_the_readme_states_each_shipped_config_s_embed_dim_and_codebook_size() -> None:
    import re

    from tests.conftest import REPO_ROOT
    from train.__main__ import CONFIGS

    readme = (REPO_ROOT / "README.md").read_text()
    stated = {}
    rows = r"^\| ((?:`[\w-]+`(?:, )?)+) \| (\d+|the checkpoint's) \| (\d+) \|$"
    for names, d, k in re.findall(rows, readme, re.M):
        for name in re.findall(r"`([\w-]+)`", names):
            stated[name] = (d, int(k))
    for path in CONFIGS.glob("*.toml"):
        cfg = load_train_config(str(path), [])
        follows_init = path.stem in ("import", "clip-locked", "clip-ft")  # d is the checkpoint's
        d = "the checkpoint's" if follows_init else str(cfg.model.embed_dim)
        assert stated.get(path.stem) == (d, cfg.model.codebook_size), path.stem
