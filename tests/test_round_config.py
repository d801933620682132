"""annotator.round_config: the round's settings, validated, stored as their changes, read by one function."""
from dataclasses import asdict

import pytest

from annotator.round_config import BadRoundConfig, RoundConfig, load_round_config, save_round_config
from annotator.store import SETTING_DEFAULTS, Store


def test_defaults_are_the_product_defaults():
    cfg = RoundConfig()
    assert (cfg.method, cfg.arch, cfg.backbone, cfg.image_size, cfg.device) == (
        "robust", "efficientnet_lite0", "pretrained", 0, "auto")
    assert cfg.changes() == {} and SETTING_DEFAULTS["round"] == {}


@pytest.mark.parametrize("bad,match", [
    (dict(method="magic"), "method must be one of"), (dict(arch="vgg"), "arch must be one of"),
    (dict(backbone="imagenet"), "backbone must be one of"),
    (dict(num_ref=0), "num_ref must be an integer >= 1"), (dict(steps=2.5), "steps must be an integer"),
    (dict(backbone_epochs=True), "backbone_epochs must be an integer"), (dict(image_size=-1), "image_size"),
    (dict(backbone_lr=0), "backbone_lr must be a number"), (dict(backbone_lr="fast"), "backbone_lr"),
    (dict(weights_path=""), "weights_path"), (dict(device=3), "device"),
    (dict(adapt_layers="head"), r"adapt_layers must be one of \('auto', 'tail', 'full'\)")])
def test_bad_values_are_named(bad, match):
    with pytest.raises(BadRoundConfig, match=match):
        RoundConfig(**bad)


def test_unknown_keys_and_non_objects_are_refused_with_the_valid_names():
    with pytest.raises(BadRoundConfig, match=r"unknown round setting\(s\) \['epochs'\]; valid: \['method', "):
        RoundConfig.from_dict({"epochs": 3})
    with pytest.raises(BadRoundConfig, match="must be an object"):
        RoundConfig.from_dict([1, 2])


def test_saved_as_changes_and_loaded_with_overrides(tmp_path):
    store = Store(tmp_path / "a.db")
    assert load_round_config(store) == RoundConfig()
    save_round_config(store, RoundConfig(steps=40, num_ref=4))
    assert store.get_setting("round") == {"steps": 40, "num_ref": 4}
    assert load_round_config(store) == RoundConfig(steps=40, num_ref=4)
    cfg = load_round_config(store, method="paper", steps=None, weights_path=None)  # None = flag not given
    assert asdict(cfg) == asdict(RoundConfig(steps=40, num_ref=4, method="paper"))
    with pytest.raises(BadRoundConfig, match="num_ref"):
        load_round_config(store, num_ref=-2)
    store.set_setting("round", {"steps": 40, "colour": "blue"})  # e.g. an older or hand-edited database
    with pytest.raises(BadRoundConfig, match="colour"):
        load_round_config(store)
