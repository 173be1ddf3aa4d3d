"""python -m exports predict|verify|repository|client - parse the command line and dispatch.

  predict MODEL.onnx IMAGE_OR_DIR ... [--json] [--threshold T] [--batch-size N]
          [--provider cpu|cuda|tensorrt]
      calibrated probabilities (the file's temperature) and `decision: auto|review` per image
      exit 0: every image classified, 1: some image failed, 2: unusable model file / provider
  verify MODEL.onnx --data PATH [--manifest M.json] [--checkpoint best.pt] [--json]
         [--allow-other-data]
      exit 0: accuracy (and parity) reproduced, 1: not reproduced or not comparable (other
      dataset/split, no recorded accuracy), 2: unusable model / data

  repository RUN_DIR|MODEL.onnx ... --out DIR [--plain-input] [--instance-kind auto|cpu|gpu]
      exit 0: every model written, 2: refused (path with other content) / unusable input
  client URL MODEL IMAGE_OR_DIR ... [--json] [--labels labels.txt] [--batch-size N]
      exit 0: every image classified by the server, 1: some image failed, 2: no server / model

`predict` never imports torch (it runs where only onnxruntime is installed); `verify` loads
the dataset with neu (torch) and imports the parity check only for --checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from exports.contract import PROVIDERS
from exports.predict import predict
from exports.runtime import Classifier, ModelFormatError, ProviderUnavailableError


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("repository", "client"):
        from exports import serving

        return serving.main(args)
    try:
        clf = Classifier(
            args.model,
            provider=args.provider,
            threads=args.threads,
            threshold=getattr(args, "threshold", None),
        )
    except (ModelFormatError, ProviderUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "predict":
        return predict(clf, args)
    from exports.verify import verify

    return verify(clf, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exports", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_verify(sub)
    _add_serving_commands(sub)
    return parser


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files / folders with an exported model")
    p.add_argument("model", help="the model.onnx written by `bench run`")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument(
        "--threshold",
        type=_probability,
        default=None,
        help="review threshold: images whose calibrated confidence is below it get decision "
        "'review', the rest 'auto' (default: the threshold stored in the file, fitted on "
        "validation for its target accuracy; a file without one sends every image to review)",
    )
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--provider", choices=list(PROVIDERS), default="cpu")
    p.add_argument("--threads", type=_positive, default=None, help="ORT intra-op threads")


def _add_verify(sub) -> None:
    v = sub.add_parser(
        "verify", help="re-check an exported model's test accuracy on its own test split"
    )
    v.add_argument("model", help="the model.onnx written by `bench run`")
    v.add_argument("--data", required=True, help="the dataset folder the model was trained on")
    v.add_argument("--manifest", help="split manifest JSON (default: re-derive from metadata)")
    v.add_argument(
        "--checkpoint",
        help="best.pt: also run the full torch-vs-ONNX parity check (an INT8/FP16 file: "
        "top-1 agreement and accuracy drop against it, as bench judges it)",
    )
    v.add_argument("--layout", default="auto", help="dataset layout (default: auto-detect)")
    v.add_argument("--exclude-bad", action="store_true", help="skip unreadable images")
    v.add_argument(
        "--allow-other-data",
        action="store_true",
        help="run the model on data it was not measured on (another dataset or split, or no "
        "recorded accuracy): reports what was and was not verified instead of failing",
    )
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--batch-size", type=_positive, default=32)
    v.add_argument("--provider", choices=list(PROVIDERS), default="cpu")
    v.add_argument("--threads", type=_positive, default=None, help="ORT intra-op threads")


def _add_serving_commands(sub) -> None:
    r = sub.add_parser("repository", help="write a Triton / OpenVINO Model Server model repository")
    r.add_argument("sources", nargs="+", help="`bench run` output folders and/or .onnx files")
    r.add_argument("--out", required=True, help="the model repository folder (new or ours)")
    r.add_argument(
        "--plain-input",
        action="store_true",
        help="serve the float32 normalised-input files as they are (default: raw-pixel uint8)",
    )
    r.add_argument(
        "--instance-kind",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="instance_group kind: auto = KIND_GPU when the run measured the model on CUDA",
    )
    r.add_argument("--json", action="store_true", help="print one JSON object per model")

    c = sub.add_parser("client", help="classify images on a KServe v2 / Triton HTTP server")
    c.add_argument("url", help="the server, e.g. http://localhost:8000")
    c.add_argument("model", help="the model's folder name in the repository")
    c.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    c.add_argument("--json", action="store_true", help="one JSON object per image per line")
    c.add_argument("--labels", help="class names, one a line (default: the model's config)")
    c.add_argument("--batch-size", type=_positive, default=8, help="images per request")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per connection/request")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
