"""Run configuration: presets, overrides, validation, round trips and hashing."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import reprolib.config as config_module
from reprolib.config import (MINI_LAYER_PAIRS, MINI_SUBTASK, MOBILENET_LAYER_PAIRS, PAPER_SUBTASK,
                             DataConfig, RunConfig, make_config)
from reprolib.errors import ReproError


# ---------------------------------------------------------------------------
# presets and world defaults

def test_mini_smoke_preset_and_world_defaults():
    cfg = make_config("mini", "smoke")
    d = cfg.data
    assert (d.world, d.pool_per_class, d.test_per_class) == ("mini", 10, 20)
    assert (cfg.epochs, cfg.lr_step, cfg.batch_size, cfg.subspace_positions) == (2, 1, 16, 8)
    assert cfg.teacher_recipe == "smoke"
    assert d.subtask_classes == MINI_SUBTASK == (0, 2, 3, 4, 6)
    assert (d.image_size, d.artifact_size, d.artifact_source) == (32, 8, "sklearn-digits")
    assert d.crop_scale == (0.5, 1.0)
    assert (cfg.teacher, cfg.student, cfg.layer_pairs) == ("mini-teacher", "mini-student", MINI_LAYER_PAIRS)
    # The protocol's constants (D3, D6, §1.2, §5) are not preset knobs.
    assert (d.contamination_rate, d.val_digits, d.train_fraction, d.val_fraction) == (0.0, "random", 0.8, 0.2)
    assert (cfg.temperature, cfg.lambda_task, cfg.lr, cfg.lr_gamma, cfg.weight_decay) == (4.0, 0.0, 1e-2, 0.5, 0.0)
    assert (cfg.method, cfg.seed, cfg.student_norm, cfg.vid_variance) == ("kd", 1, "standardize", "learned")


@pytest.mark.parametrize("preset, pool, test, epochs, step, batch, val_every", [
    ("quick", 250, 500, 200, 50, 32, 4),
    ("full", 250, None, 200, 50, 32, 1),
])
def test_mini_quick_and_full_presets(preset, pool, test, epochs, step, batch, val_every):
    cfg = make_config("mini", preset)
    assert (cfg.data.pool_per_class, cfg.data.test_per_class) == (pool, test)
    assert (cfg.epochs, cfg.lr_step, cfg.batch_size, cfg.preset, cfg.val_every) == (
        epochs, step, batch, preset, val_every)
    # The mini world's rate (book/decisions.md, "the mini world's recipe"); the paper
    # world keeps the paper's 1e-3 (§5).
    assert cfg.lr == 1e-2 and make_config("paper", preset).lr == 1e-3
    from reprolib.config import get_variant, main_variant

    assert cfg.teacher_recipe == dict(get_variant("mini", main_variant()).fields)["teacher_recipe"]
    assert cfg.student == "mini-student"


def test_quick_preset_budget_in_optimiser_steps():
    """The adequate experiment: >= 500 optimiser steps, >= 250 validation images,
    a small training set (the training-size knob, not a smaller pool)."""
    from reprolib.config import optimizer_steps, split_sizes, steps_per_epoch

    cfg = make_config("mini", "quick")
    sizes = split_sizes(cfg.data)
    assert sizes == {"pool": 1250, "train": 200, "val": 250, "test": 2500}
    assert steps_per_epoch(cfg) == 6          # 200 // 32, the last batch dropped
    assert optimizer_steps(cfg) == 1200
    # The sizes are those the world really builds (same random_split).
    from reprolib.data import train_val_split

    tr, va = train_val_split(1250, 7, cfg.data.train_fraction, cfg.data.val_fraction)
    assert (len(tr), len(va)) == (200, 250)
    assert optimizer_steps(make_config("paper", "quick")) is None   # pool size unknown


@pytest.mark.parametrize("n", [7, 50, 1250, 1251])
@pytest.mark.parametrize("train", [0.08, 0.16, 0.5, 0.64, 0.8])
def test_split_lengths_match_the_world_split(n, train):
    from reprolib.config import split_lengths
    from reprolib.data import train_val_split

    tr, va = train_val_split(n, 3, train, 0.2)
    assert split_lengths(n, train, 0.2) == (len(tr), len(va))


def test_val_every_must_be_a_positive_integer():
    with pytest.raises(ReproError, match="val_every"):
        make_config("mini", "smoke", val_every=0)


def test_presets_change_sizes_only_never_the_protocol():
    # train_fraction is the protocol's own size knob (§1.2, the authors' --training-size).
    protocol = ("contamination_rate", "val_digits", "val_fraction", "artifact_corner")
    base = make_config("mini", "quick")
    for preset in ("smoke", "full"):
        other = make_config("mini", preset)
        for name in protocol:
            assert getattr(other.data, name) == getattr(base.data, name), name
        assert (other.temperature, other.lambda_task, other.lr) == (base.temperature, base.lambda_task, base.lr)


def test_paper_world_defaults_follow_the_protocol():
    cfg = make_config("paper", "full")
    d = cfg.data
    assert d.subtask_classes == PAPER_SUBTASK == (129, 130, 134, 135, 138)
    assert (d.image_size, d.artifact_size, d.artifact_source, d.crop_scale) == (224, 56, "mnist", (0.08, 1.0))
    assert (cfg.teacher, cfg.student) == ("resnet101", "mobilenetv4_conv_small")
    assert cfg.layer_pairs == MOBILENET_LAYER_PAIRS == (
        ("layer1", "blocks.1.1"), ("layer2", "blocks.2.3"), ("layer3", "blocks.3.1"), ("layer4", "blocks.3.5"))
    assert (cfg.epochs, cfg.lr_step, cfg.batch_size) == (100, 25, 32)
    assert d.pool_per_class is None and d.test_per_class is None


def test_paper_pair_brings_its_layer_map_unless_one_is_given():
    cfg = make_config("paper", "smoke", teacher="resnet18", student="resnet18-s")
    assert cfg.layer_pairs == MINI_LAYER_PAIRS
    own = (("layer2", "layer3"),)
    cfg = make_config("paper", "smoke", teacher="resnet18", student="resnet18-s", layer_pairs=own)
    assert cfg.layer_pairs == own
    # A pair outside D11 keeps the world's default map.
    cfg = make_config("paper", "smoke", teacher="resnet18")
    assert cfg.layer_pairs == MOBILENET_LAYER_PAIRS


def test_paper_test_size_config_is_valid():
    cfg = make_config("paper", "smoke", image_size=64, artifact_size=16, teacher="resnet18",
                      student="resnet18-s", teacher_weights="/some/file.pth")
    assert (cfg.data.image_size, cfg.data.artifact_size, cfg.teacher_weights) == (64, 16, "/some/file.pth")


# ---------------------------------------------------------------------------
# overrides

def test_overrides_reach_data_and_run_fields():
    cfg = make_config("mini", "smoke", contamination_rate=0.5, method="vid", lambda_layer=10.0,
                      pool_per_class=25, seed=3, artifact_corner="bottom-right")
    assert cfg.data.contamination_rate == 0.5 and cfg.data.pool_per_class == 25
    assert cfg.data.artifact_corner == "bottom-right"
    assert (cfg.method, cfg.lambda_layer, cfg.seed) == ("vid", 10.0, 3)


def test_none_overrides_keep_defaults_except_nullable_fields():
    # The CLI passes None for options the user did not give.
    cfg = make_config("mini", "smoke", contamination_rate=None, seed=None, method=None)
    assert (cfg.data.contamination_rate, cfg.seed, cfg.method) == (0.0, 1, "kd")
    cfg = make_config("mini", "smoke", pool_per_class=None, test_per_class=None)
    assert cfg.data.pool_per_class is None and cfg.data.test_per_class is None


def test_lists_become_tuples():
    cfg = make_config("mini", "smoke", subtask_classes=[0, 1, 2], layer_pairs=[["layer1", "layer2"]],
                      crop_scale=[0.3, 0.9])
    assert cfg.data.subtask_classes == (0, 1, 2)
    assert cfg.layer_pairs == (("layer1", "layer2"),)
    assert cfg.data.crop_scale == (0.3, 0.9)


def test_output_only_kd_has_no_lambda():
    assert make_config("mini", "smoke", method="kd", lambda_layer=100.0).lambda_layer == 0.0
    assert make_config("mini", "smoke", method="at", lambda_layer=100.0).lambda_layer == 100.0


def test_replace_validates():
    cfg = make_config("mini", "smoke", method="at")
    assert cfg.replace(contamination_rate=1.0, epochs=3).data.contamination_rate == 1.0
    with pytest.raises(ReproError, match=r"\[0, 1\]"):
        cfg.replace(contamination_rate=1.5)


# ---------------------------------------------------------------------------
# round trip and hashing

@pytest.mark.parametrize("world, preset, extra", [
    ("mini", "smoke", dict(method="subdistill", contamination_rate=0.5, lambda_layer=10.0)),
    ("mini", "quick", dict(pool_per_class=None, val_digits="correlated")),
    ("paper", "smoke", dict(teacher="resnet18", student="resnet18-s", teacher_weights="/w.pth")),
    ("paper", "full", dict(method="vkd")),
])
def test_from_dict_round_trips_through_json(world, preset, extra):
    cfg = make_config(world, preset, **extra)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.key() == cfg.key()


def test_from_dict_rejects_unknown_fields_and_bad_values():
    d = make_config("mini", "smoke").to_dict()
    with pytest.raises(ReproError, match="unknown config field"):
        RunConfig.from_dict({**d, "colour": "blue"})
    d["data"]["contamination_rate"] = 2.0
    with pytest.raises(ReproError, match=r"\[0, 1\]"):
        RunConfig.from_dict(d)


def test_key_is_stable_and_depends_on_the_code_version(monkeypatch):
    a, b = make_config("mini", "smoke", method="at"), make_config("mini", "smoke", method="at")
    assert a.key() == b.key()
    assert len(a.key()) == 16 and int(a.key(), 16) >= 0
    before = a.key()
    monkeypatch.setattr(config_module, "CODE_VERSION", "another-version")
    assert a.key() != before


# A different, valid value for every field (the base is the mini smoke config with method "at").
RUN_CHANGES = dict(preset="quick", method="vid", seed=2, lambda_layer=10.0, lambda_task=0.5,
                   temperature=2.0, teacher="resnet18", student="resnet18-s",
                   layer_pairs=(("layer1", "layer1"),), epochs=3, lr=5e-4, lr_step=2, lr_gamma=0.1,
                   weight_decay=1e-4, batch_size=8, student_norm="center", vid_variance="fixed",
                   subspace_positions=5, teacher_weights="/x.pth", teacher_recipe="10-epoch",
                   val_every=3)
DATA_CHANGES = dict(world="paper", subtask_classes=(0, 2, 3, 4, 5), pool_per_class=50,
                    test_per_class=10, train_fraction=0.7, val_fraction=0.25, contamination_rate=0.5,
                    val_digits="correlated", artifact_size=6, artifact_corner="bottom-right",
                    artifact_source="mnist", image_size=28, augment=False, crop_scale=(0.3, 1.0))


def test_every_field_has_a_change_in_this_test():
    assert set(RUN_CHANGES) == {f.name for f in dataclasses.fields(RunConfig)} - {"data"}
    assert set(DATA_CHANGES) == {f.name for f in dataclasses.fields(DataConfig)}


def test_key_differs_when_any_field_changes():
    base = make_config("mini", "smoke", method="at")
    keys = {"base": base.key()}
    for name, value in RUN_CHANGES.items():
        assert getattr(base, name) != value, name
        keys[name] = dataclasses.replace(base, **{name: value}).key()
    for name, value in DATA_CHANGES.items():
        assert getattr(base.data, name) != value, name
        keys["data." + name] = dataclasses.replace(base, data=dataclasses.replace(base.data, **{name: value})).key()
    assert len(set(keys.values())) == len(keys), keys


# ---------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("overrides, message", [
    (dict(contamination_rate=1.5), r"rho=1\.5 is outside \[0, 1\]"),
    (dict(contamination_rate=-0.1), r"outside \[0, 1\]"),
    (dict(contamination_rate=math.nan), r"outside \[0, 1\]"),
    (dict(subtask_classes=(0, 2, 3, 4, 10)), r"\[10\] are out of range for the mini world \(valid: 0\.\.9\)"),
    (dict(subtask_classes=(0, 2, 2, 4, 6)), "repeats a class"),
    (dict(subtask_classes=(3,)), "at least two classes"),
    (dict(artifact_size=40), r"artifact \(40 px\) is larger than the image \(32 px\)"),
    (dict(artifact_size=0), "positive number of pixels"),
    (dict(method="distil"), "unknown method 'distil'; valid methods: kd, at, vid, vkd, subdistill"),
    (dict(method="at", lambda_layer=-1.0), r"lambda_layer=-1\.0 must be a finite number >= 0"),
    (dict(method="at", lambda_layer=math.inf), "finite"),
    (dict(lambda_task=-0.5), "lambda_task"),
    (dict(val_digits="oracle"), r"choose one of \['random', 'correlated'\]"),
    (dict(artifact_corner="middle"), "top-left"),
    (dict(student_norm="whiten"), "standardize"),
    (dict(vid_variance="frozen"), "learned"),
    (dict(epochs=0), "epochs=0 must be a positive integer"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=0.0), "lr=0.0 must be > 0"),
    (dict(temperature=0.0), "temperature"),
    (dict(pool_per_class=1), "pool_per_class=1 must be an integer >= 2"),
    (dict(train_fraction=0.9), "sum to at most 1"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(method="at", layer_pairs=()), "at least one layer pair"),
    (dict(learning_rate=0.1), r"unknown config field\(s\): \['learning_rate'\]"),
])
def test_bad_config_raises_a_helpful_error(overrides, message):
    with pytest.raises(ReproError, match=message):
        make_config("mini", "smoke", **overrides)


def test_unknown_world_and_preset_list_the_valid_ones():
    with pytest.raises(ReproError, match=r"unknown world 'imagenet'; choose one of \['mini', 'paper'\]"):
        make_config("imagenet", "smoke")
    with pytest.raises(ReproError, match=r"unknown preset 'huge'; choose one of \['smoke', 'quick', 'full'\]"):
        make_config("mini", "huge")


def test_paper_world_classes_range_is_imagenet():
    assert make_config("paper", "smoke", subtask_classes=(0, 999)).data.subtask_classes == (0, 999)
    with pytest.raises(ReproError, match=r"valid: 0\.\.999"):
        make_config("paper", "smoke", subtask_classes=(0, 1000))


def test_repro_error_is_a_value_error():
    assert issubclass(ReproError, ValueError)


def test_scale_schedule_scales_epochs_rate_step_and_validation_only():
    from reprolib.config import scale_schedule

    base = make_config("mini", "quick", method="kd", seed=1)
    long = scale_schedule(base, 3)
    assert (long.epochs, long.lr_step, long.val_every) == (3 * base.epochs, 3 * base.lr_step, 3 * base.val_every)
    assert long.replace(epochs=base.epochs, lr_step=base.lr_step, val_every=base.val_every) == base
    tiny = scale_schedule(base, 1e-3)           # never below one epoch, step or validation
    assert (tiny.epochs, tiny.lr_step, tiny.val_every) == (1, 1, 1)
    with pytest.raises(ReproError, match="positive factor"):
        scale_schedule(base, 0)


# -- world variants (the precondition ladder) ----------------------------------
def test_variants_change_only_their_knobs():
    from reprolib.config import MINI_VARIANTS, optimizer_steps, split_sizes

    base = make_config("mini", "quick", "one-epoch-teacher")
    for v in MINI_VARIANTS:
        cfg = make_config("mini", "quick", v.name)
        d_cfg, d_base = cfg.to_dict(), base.to_dict()
        changed = {k for k in d_cfg if k != "data" and d_cfg[k] != d_base[k]}
        changed |= {k for k in d_cfg["data"] if d_cfg["data"][k] != d_base["data"][k]}
        knobs = set(v.field_dict())
        if v.train_scale != 1.0 or v.step_scale != 1.0:
            knobs |= {"epochs", "lr_step", "val_every"} | ({"train_fraction"} if v.train_scale != 1.0 else set())
        assert changed <= knobs | {"teacher_recipe"}, (v.name, changed)
        # the step budget: the preset's, times step_scale (rounded up to whole epochs)
        assert optimizer_steps(cfg) >= round(1200 * v.step_scale)
        assert optimizer_steps(cfg) < round(1200 * v.step_scale) + cfg.epochs
        assert split_sizes(cfg.data)["val"] == 250
        assert split_sizes(cfg.data)["train"] == round(200 * v.train_scale)


def test_variant_train_sizes_and_schedules():
    c20 = make_config("mini", "quick", "train-20")
    assert (c20.epochs, c20.lr_step, c20.val_every) == (400, 100, 8)
    c10 = make_config("mini", "quick", "train-10")
    assert (c10.epochs, c10.lr_step, c10.val_every) == (1200, 300, 24)
    lr = make_config("mini", "quick", "paper-lr")
    assert (lr.lr, lr.epochs, lr.lr_step, lr.val_every) == (1e-3, 600, 150, 12)
    # user overrides win over the variant
    assert make_config("mini", "quick", "train-20", epochs=7).epochs == 7
    # the smoke preset keeps its own tiny teacher
    assert make_config("mini", "smoke", "paper-crop").teacher_recipe == "smoke"
    assert make_config("mini", "smoke", "paper-crop").data.crop_scale == (0.08, 1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(world="mini", variant="no-such"), "unknown world variant 'no-such'"),
    (dict(world="paper", variant="paper-crop"), "has no variants"),
    (dict(world="mini", preset="smoke", variant="train-10"), "fewer than a batch"),
    (dict(world="mini", teacher_recipe="standard"), "unknown teacher recipe"),
])
def test_bad_variants_are_refused(kwargs, match):
    with pytest.raises(ReproError, match=match):
        make_config(**kwargs)
