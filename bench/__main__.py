"""python -m bench {run,speed,calibrate,explain,train-speed,list}: parse the command line and dispatch. Nothing else."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from bench.config import ConfigError, Recipe, RunOptions, add_dataclass_args, build_configs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Train, measure and export steel surface defect classifiers (NEU-CLS).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="train every model with one recipe, report, export the winners to ONNX",
        description="Train, evaluate, measure and export. Re-running the same command resumes.",
    )
    run.add_argument("--config", help="TOML file with recipe/run keys (flag names)")
    add_dataclass_args(run, RunOptions, title="run")
    add_dataclass_args(run, Recipe, title="recipe")

    speed = sub.add_parser("speed", help="measure torch and ONNX Runtime speed, no training")
    speed.add_argument("--models", default="all", help="as for run (default: all)")
    speed.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the checkpoint's, else 200)",
    )
    speed.add_argument("--checkpoint", help="a best.pt to measure instead of random init")
    speed.add_argument(
        "--data",
        help="the checkpoint's dataset (default: $NEU_DATA): INT8 is calibrated on its training "
        "images and every variant judged on its test images; it must match the dataset and "
        "split hashes the checkpoint records. Without it the variants are timed, not judged",
    )
    speed.add_argument("--num-classes", type=int, default=6, help="head size for random init")
    speed.add_argument("--out", help="output folder (default runs/speed-<size>px)")
    speed.add_argument("--device", default="auto", help="auto | cpu | cuda")
    speed.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime")
    speed.add_argument(
        "--ort-providers",
        help="ONNX Runtime providers to measure, e.g. cpu,cuda,tensorrt. Default: cpu, plus "
        "cuda and tensorrt when they really run on this machine. Named GPU providers that "
        "fall back to CPU are an error.",
    )
    speed.add_argument("--speed-min-seconds", type=float, default=1.0)
    speed.add_argument("--speed-min-iters", type=int, default=20)
    speed.add_argument(
        "--speed-max-seconds",
        type=float,
        default=10.0,
        help="a case stops after this long per round even below --speed-min-iters "
        "(at least one sample)",
    )
    speed.add_argument(
        "--strict-providers",
        action="store_true",
        help="fail when a GPU provider cannot run every node instead of using the CPU for some",
    )
    speed.add_argument(
        "--speed-rounds",
        type=int,
        default=3,
        help="rounds, alternating runtimes; rows give the median and spread (default 3)",
    )

    speed.add_argument(
        "--variants",
        default="all",
        help="deployment variants beside torch and ONNX Runtime FP32: all, or a comma list of "
        "fp32, int8, fp16, bf16, compile, openvino (default: all that apply here)",
    )
    speed.add_argument(
        "--calibration-images",
        type=int,
        default=256,
        help="INT8 calibration inputs (synthetic without a dataset)",
    )
    speed.add_argument("--fidelity-min-agreement", type=float, default=0.99)
    speed.add_argument("--fidelity-max-drop-pp", type=float, default=0.5)

    from bench.measure.trainspeed import TrainSpeedOptions

    ts = sub.add_parser(
        "train-speed",
        help="training img/s of each model in fp32 vs mixed precision (and compile), as ratios",
        description="Trains each model a few steps per precision, interleaved in one process, "
        "and prints img/s and the ratio to fp32 with the CPU's instruction sets.",
    )
    add_dataclass_args(ts, TrainSpeedOptions, title="train-speed")

    rb = sub.add_parser(
        "robustness",
        help="accuracy of a run's models (or one .onnx file) on corrupted test images",
        description="The corruption benchmark (SNR levels, corruptions x severities) on the "
        "held-out test images of an existing run folder or exported ONNX file.",
    )
    from bench.cli.robustness import add_arguments

    add_arguments(rb)

    from bench.cli.postrun import add_parsers

    add_parsers(sub)  # calibrate, explain

    ls = sub.add_parser("list", help="the model registry with params and GFLOPs")
    ls.add_argument("--image-size", type=int, default=200)
    ls.add_argument("--num-classes", type=int, default=6)
    return p


def _robustness_parser() -> argparse.ArgumentParser:
    # Without the other subcommands: `bench train-speed`'s options import torch, and
    # `bench robustness MODEL.onnx` must run where torch is not installed.
    from bench.cli.robustness import add_arguments

    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("robustness"))
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    light = argv[:1] == ["robustness"] and not {"-h", "--help"} & set(argv)
    args = (_robustness_parser() if light else _parser()).parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    try:
        if args.command == "run":
            return _run(args, console)
        if args.command == "speed":
            return _speed(args, console)
        if args.command == "list":
            return _list(args, console)
        if args.command == "train-speed":
            return _train_speed(args, console)
        if args.command == "robustness":
            return _robustness(args, console)
        if args.command in ("calibrate", "explain"):
            from bench.cli.postrun import dispatch

            return dispatch(args, console)
    except ConfigError as e:
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    return 2


def _run(args, console) -> int:
    from bench.cli.run import run
    from bench.registry import WeightsUnavailableError
    from bench.report.core import print_tables
    from bench.ui import make_reporter

    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        recipe, opts = build_configs(values, config_file=args.config)
        reporter = make_reporter()
        try:
            results, code = run(recipe, opts, reporter)
        finally:
            reporter.close()
    except (ValueError, WeightsUnavailableError, FileNotFoundError) as e:
        # Bad flags, bad data (neu.dataset.DatasetError is a ValueError), missing weights.
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    except KeyboardInterrupt:
        # Every file is written atomically and each epoch checkpointed: nothing is lost.
        console.print("interrupted: run the same command again to resume", markup=False)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return code  # torchrun: rank 0 prints for the run
    print_tables(results, console)
    out = opts.out or f"runs/{results['name']}"
    console.print(
        f"results: {out}/results.json, report: {out}/report.md (with plots: {out}/report.html)",
        markup=False,
    )
    return code


def _speed(args, console) -> int:
    from bench.measurecmd import speed_command
    from bench.report.core import print_tables
    from bench.ui import make_reporter
    from exports.runtime import ProviderUnavailableError

    opts = RunOptions(
        models=args.models,
        out=args.out,
        device=args.device,
        threads=args.threads,
        speed_min_seconds=args.speed_min_seconds,
        speed_min_iters=args.speed_min_iters,
        speed_max_seconds=args.speed_max_seconds,
        speed_rounds=args.speed_rounds,
        strict_providers=args.strict_providers,
        variants=args.variants,
        calibration_images=args.calibration_images,
        fidelity_min_agreement=args.fidelity_min_agreement,
        fidelity_max_drop_pp=args.fidelity_max_drop_pp,
    )
    reporter = make_reporter()
    try:
        results, out = speed_command(
            opts,
            image_size=args.image_size,
            checkpoint=args.checkpoint,
            num_classes=args.num_classes,
            reporter=reporter,
            ort_providers=args.ort_providers,
            data=args.data,
        )
    except (ValueError, FileNotFoundError, ProviderUnavailableError) as e:
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    finally:
        reporter.close()
    print_tables(results, console)
    console.print(f"results: {out}/results.json, report: {out}/report.md", markup=False)
    return 0


def _robustness(args, console) -> int:
    from bench.cli.robustness import robustness_command
    from bench.report.robustness import summary_table

    try:
        results, out = robustness_command(args, log=lambda m: console.print(m, markup=False))
    except (ValueError, OSError) as e:  # bad flags, DatasetError, ModelFormatError
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume", markup=False)
        return 130
    from rich.table import Table

    head, body = summary_table(results["robustness"])
    table = Table(title="accuracy on corrupted test images")
    for h in head:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    console.print(f"results: {out}/results.json, {out}/robustness.csv, {out}/report.html",
                  markup=False)  # fmt: skip
    return 0


def _train_speed(args, console) -> int:
    from rich.table import Table

    from bench.measure.trainspeed import TrainSpeedOptions, table_rows, train_speed

    opts = TrainSpeedOptions(**{k: v for k, v in vars(args).items() if k != "command"})
    results = train_speed(opts, log=lambda m: console.print(m, markup=False))
    env = results["environment"]
    head, body = table_rows(results)
    table = Table(
        title=f"training speed, batch {opts.batch_size}, {opts.image_size} px, "
        f"{env['torch_threads']} threads, {env['cpu']} ({env['cpu_isa_label']})"
    )
    for h in head:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    for reason in dict.fromkeys(r["amp_reason"] for r in results["rows"]):
        console.print(f"precision: {reason}", markup=False)
    for r in results["rows"]:
        if r["error"]:
            console.print(f"{r['model']} {r['variant']}: {r['error']}", markup=False)
    return 0


def _list(args, console) -> int:
    from rich.table import Table

    from bench.measure import count_gflops, count_params
    from bench.registry import DEFAULT_MODELS, build_model, imagenet_weights, list_models

    table = Table(title=f"registered models (GFLOPs at {args.image_size} px, batch 1)")
    for col in ("model", "in 'all'", "params (M)", "GFLOPs", "ImageNet weights"):
        table.add_column(col)
    for name in list_models():
        model = build_model(name, num_classes=args.num_classes)
        w = imagenet_weights(name)
        table.add_row(
            name,
            "yes" if name in DEFAULT_MODELS else "",
            f"{count_params(model) / 1e6:.2f}",
            f"{count_gflops(model, args.image_size):.2f}",
            str(w) if w else "-",
        )
    console.print(table)
    console.print("Any other torchvision classification model name also works.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
