from __future__ import annotations

import dataclasses
import json

import pytest

from robofm.config import (
    MODEL_PRESETS,
    TRAIN_PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    get_preset,
)
from robofm.errors import ConfigError

ALL_PRESETS = {
    **{f"model:{k}": v for k, v in MODEL_PRESETS.items()},
    **{f"train:{k}": v for k, v in TRAIN_PRESETS.items()},
}


@pytest.mark.parametrize("name", sorted(ALL_PRESETS))
def test_every_preset_round_trips_through_json(name):
    preset = ALL_PRESETS[name]
    text = json.dumps(config_to_dict(preset))
    assert config_from_dict(type(preset), json.loads(text)) == preset


def test_presets_are_frozen_and_overridable_with_replace():
    tiny = MODEL_PRESETS["tiny"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.width = 1  # type: ignore[misc]
    wider = dataclasses.replace(tiny, width=128)
    assert wider.width == 128 and tiny.width == 64
    assert TRAIN_PRESETS["finetune"].optim.lr == pytest.approx(2e-5)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_preset(MODEL_PRESETS, "huge", "model preset")
    assert "unknown model preset 'huge'" in str(err.value)
    assert "small" in str(err.value) and "tiny" in str(err.value)


def test_missing_fields_take_defaults_for_old_checkpoints():
    cfg = config_from_dict(TrainConfig, {"steps": 5, "model": {"head": "bins"}})
    assert cfg.steps == 5 and cfg.model.head == "bins"
    assert cfg.model.width == ModelConfig().width and cfg.optim == OptimConfig()


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"steps": "5"}, "train.steps: expected int"),
        ({"steps": True}, "train.steps: expected int"),
        ({"model": {"widht": 3}}, "train.model: unknown field(s) ['widht']"),
        ({"optim": {"lr": "fast"}}, "train.optim.lr: expected a number"),
        ({"optim": {"betas": [0.9]}}, "train.optim.betas: expected 2 items"),
        ({"data": {"paths": "a"}}, "train.data.paths: expected a list"),
        ({"data": {"weights": [1.0, "x"]}}, "train.data.weights[1]"),
        ({"model": 3}, "train.model: expected an object"),
    ],
)
def test_bad_fields_are_named(data, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(TrainConfig, data, "train")
    assert fragment in str(err.value)


def test_ints_are_accepted_for_float_fields_and_tuples_restored():
    cfg = config_from_dict(DataConfig, {"weights": [1, 2.5], "paths": ["a", "b"]})
    assert cfg.weights == (1.0, 2.5) and isinstance(cfg.weights[0], float)
    assert cfg.paths == ("a", "b")


def test_cli_overrides_fields_of_a_preset():
    import tyro

    cfg = tyro.cli(
        TrainConfig,
        default=TRAIN_PRESETS["finetune"],
        args=["--optim.lr", "3e-5", "--model.head", "bins", "--steps", "7"],
    )
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.model.head == "bins" and cfg.steps == 7
    assert cfg.optim.warmup_steps == TRAIN_PRESETS["finetune"].optim.warmup_steps
