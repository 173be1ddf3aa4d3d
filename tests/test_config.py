import pytest

from bench.__main__ import main
from bench.config import ConfigError, Recipe, RunOptions, build_configs, field_docs


def test_every_field_has_help_text():
    for cls in (Recipe, RunOptions):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if not docs.get(f)]
        assert not missing, f"{cls.__name__} fields without docstring: {missing}"


def test_defaults_follow_the_recipe():
    r = Recipe()
    assert (r.batch_size, r.image_size, r.lr_gamma) == (32, 200, 0.9)
    assert r.effective_lr("imagenet") == pytest.approx((1e-4, 1e-3))  # head 10x
    assert r.effective_lr("none") == pytest.approx((1e-3, 1e-3))
    assert Recipe(lr=5e-4).effective_lr("imagenet") == pytest.approx((5e-4, 5e-3))


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 1}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"lr_gamma": 1.5}, "--lr-gamma"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"weights": "imagenet21k"}, "--weights"),
        ({"image_size": 8}, "--image-size"),
    ],
)
def test_invalid_recipe_values_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        Recipe(**kwargs)


def test_invalid_run_options_name_the_flag():
    with pytest.raises(ConfigError, match="--seeds"):
        RunOptions(seeds="0,a")
    with pytest.raises(ConfigError, match="--seeds"):
        RunOptions(seeds="1,1")
    with pytest.raises(ConfigError, match="--layout"):
        RunOptions(layout="coco")
    with pytest.raises(ConfigError, match=r"--variants .*int4"):
        RunOptions(variants="int8,int4")
    with pytest.raises(ConfigError, match="--calibration-images"):
        RunOptions(calibration_images=0)
    with pytest.raises(ConfigError, match=r"--fidelity-min-agreement .*0\.99.*99"):
        RunOptions(fidelity_min_agreement=99)
    with pytest.raises(ConfigError, match="--fidelity-max-drop-pp"):
        RunOptions(fidelity_max_drop_pp=-1)


def test_precedence_flags_over_file_over_quick(tmp_path):
    cfg = tmp_path / "recipe.toml"
    cfg.write_text('epochs = 7\n[recipe]\nbatch-size = 16\n[run]\nseeds = "0,1"\n')
    recipe, run = build_configs({"quick": True, "epochs": 3}, config_file=str(cfg))
    assert recipe.epochs == 3  # flag beats file
    assert recipe.batch_size == 16  # file
    assert recipe.image_size == 64 and recipe.limit_per_class == 20  # quick preset
    assert run.variants == "int8"  # a first look skips the compile/OpenVINO/fp16 variants
    assert run.seed_list == [0, 1]


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        build_configs({}, config_file=str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        build_configs({}, config_file=str(unknown))
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('epochs = "ten"\n')
    with pytest.raises(ConfigError, match="--epochs"):
        build_configs({}, config_file=str(wrong_type))


def test_cli_rejects_bad_flags_before_any_work(capsys):
    assert main(["run", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().out
    assert main(["run", "--models", "resnet5"]) == 2
    out = capsys.readouterr().out
    assert "Unknown model 'resnet5'" in out and "shufflenet_v2_x1_0" in out
    with pytest.raises(SystemExit):
        main(["run", "--epochs", "many"])
    assert "--epochs expects int" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cls, kwargs, shown",
    [
        (Recipe, {"label_smoothing": 1.5}, "(got 1.5)"),
        (Recipe, {"crop_scale_min": 2.0}, "(got 2.0)"),
        (Recipe, {"eval_batch_size": -3}, "(got -3)"),
        (Recipe, {"folds": 0}, "(got 0)"),
        (Recipe, {"folds": 2, "val_fraction": 0.5}, "--folds"),
        (RunOptions, {"speed_min_seconds": -2.5}, "(got -2.5)"),
        (RunOptions, {"speed_max_seconds": 0.5}, "--speed-max-seconds must be > 0 and >="),
        (RunOptions, {"speed_min_iters": -7}, "(got -7)"),
    ],
)
def test_config_errors_show_the_value_given(cls, kwargs, shown):
    # The message used to say "(got 0)" whatever the user typed.
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert shown in str(e.value)
