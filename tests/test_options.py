"""One declaration per flag: `bench run` and `bench speed` take their flags from the same
option groups (bench.config), so a flag both show means and says the same in both."""

import argparse
import dataclasses
import typing

import pytest

from bench.__main__ import build_parser, main
from bench.config import (
    RUN_FLAGS,
    SPEED_FLAGS,
    Recipe,
    RunOptions,
    SpeedCommandOptions,
    literal_choices,
)


def _subparser(name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _shown(action: argparse.Action) -> tuple:
    """What --help says of a flag: its text (with the default), choices, metavar, kind."""
    return (action.help, action.choices, action.metavar, type(action), action.nargs)


def test_every_flag_both_commands_show_reads_the_same():
    run, speed = _flags(_subparser("run")), _flags(_subparser("speed"))
    shared = sorted(set(run) & set(speed) - {"--help"})
    # the models, machine and speed flags, the dataset and the image size
    assert {"--models", "--device", "--threads", "--out", "--data", "--image-size",
            "--speed-rounds", "--variants", "--strict-providers"} <= set(shared)  # fmt: skip
    different = [f for f in shared if _shown(run[f]) != _shown(speed[f])]
    assert different == [], {f: (run[f].help, speed[f].help) for f in different}
    for flag in shared:
        assert "(default: " in run[flag].help, flag


def test_run_shows_every_option_once_and_speed_its_own_on_top():
    run = _flags(_subparser("run"))
    fields = [f.name for cls in (RunOptions, Recipe) for f in dataclasses.fields(cls)]
    assert {"--" + n.replace("_", "-") for n in fields} <= set(run)
    for spec in (RUN_FLAGS, SPEED_FLAGS):  # each field comes from one group, once
        names = [
            f.name
            for _, cls, only in spec
            for f in dataclasses.fields(cls)
            if only is None or f.name in only
        ]
        assert len(names) == len(set(names))
    speed = _flags(_subparser("speed"))
    for own in ("--checkpoint", "--num-classes", "--ort-providers"):
        assert own in speed and own not in run
    assert "--epochs" not in speed and "--speed" not in speed  # run-only flags


def test_literal_fields_become_choices():
    hints = typing.get_type_hints(RunOptions)
    assert literal_choices(hints["layout"]) == ("auto", "neu-cls", "folder", "kaggle", "neu-det")
    run = _flags(_subparser("run"))
    assert run["--layout"].choices == ("auto", "neu-cls", "folder", "kaggle", "neu-det")
    assert run["--data-placement"].choices == ("auto", "device", "host", "mmap")
    assert run["--amp"].choices == ("auto", "bf16", "fp16", "off")
    assert run["--models"].choices is None


def test_an_invalid_choice_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--layout", "coco"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--layout" in err and "invalid choice" in err and "'coco'" in err


def test_speed_flags_not_given_keep_their_meaning():
    args = _subparser("speed").parse_args(["--models", "resnet18"])
    opts = SpeedCommandOptions(**vars(args))
    assert opts.models == "resnet18" and opts.speed_rounds == 3 and opts.variants == "all"
    # not given: the checkpoint's image size and dataset decide, not a copied default
    assert opts.image_size is None and opts.data is None and opts.num_classes == 6
