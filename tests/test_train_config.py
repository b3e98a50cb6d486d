"""The config schema: the shipped recipes load, and errors name the key."""

import pytest

from conftest import REPO
from qwen2audio.train import load_config


def test_recipes_are_valid_configs(tiny):
    recipes = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "recipes" / "demo").glob("*.yaml"))
    assert len(recipes) >= 7
    for recipe in recipes:
        stage = recipe.stem.split("_")[0]
        config = load_config(recipe, ["data.num_workers=0"], stage=stage)
        assert config.stage == stage and config.data.train


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"model.lora.rank: expected int, got 'eight'"):
        load_config(None, ["model.lora.rank=eight"])
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="model.lm: mode must be one of frozen, full, lora"):
        load_config(None, ["model.lm=partly"])
    (tmp_path / "c.yaml").write_text("stage: dpo\n")
    with pytest.raises(ValueError, match="the config says stage: dpo but --stage sft"):
        load_config(tmp_path / "c.yaml", stage="sft")
    config = load_config(None, ["optim.lr=2e-4", "data.train=[a.jsonl, {path: b.jsonl, weight: 3}]"])
    assert config.optim.lr == 2e-4 and [s.weight for s in config.data.train] == [1.0, 3.0]
