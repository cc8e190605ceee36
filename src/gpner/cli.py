"""Command line: a thin shell over the library (gpner train | distill | evaluate | predict |
convert | serve | render)."""

from __future__ import annotations

import argparse
import sys
import warnings

from gpner.commands import (  # the handlers, and the message rewriting main applies
    _PREDICT_EPILOG,
    CLIError,
    _as_flags,
    _convert,
    _convert_checkpoint,
    _distill,
    _evaluate,
    _export,
    _output_format,
    _predict,
    _render,
    _serve,
    _train,
)

__all__ = ["CLIError", "build_parser", "main"]

_DESCRIPTION = (
    "Span-based named-entity recognition (nested entities included) with the GlobalPointer "
    "head: train a model, evaluate it, predict with it, convert data between formats, serve it "
    "over HTTP, render its predictions as HTML."
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be computed when help is shown (``epilog_fn``):
    listing the registered choices imports the model code, which plain commands need not wait
    for."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


def _train_epilog() -> str:
    from gpner.config import registered_choices

    lines = ["registered choices (--set KEY=NAME):"]
    for key, registry in registered_choices().items():
        lines.append(f"  {key}:")
        lines += [f"    {name:<26} {registry.help(name)}" for name in registry]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ parser

_DISTILL_DESCRIPTION = """\
Train the student CONFIG describes on CE(gold) + beta * T^2 * KD(student / T, teacher / T),
KD over the span cells both models score (a student cell whose characters no teacher cell covers
exactly is left out of KD): 'gpner train CONFIG --set distill.teacher=TEACHER'. The [distill]
table (--set distill.KEY=VALUE): kd (below; default gp_kl, the divergence D), beta (1/64),
temperature (1), floor (-10: teacher logits at or below it are cached as "<= floor"), cache and
cache_dir (the teacher's logits of the training texts, cached once in output_dir/teacher_logits),
teacher_batch_size (64). See gpner/distill.py and the README.
"""


def _threads_type(value: str) -> int | None:
    from gpner.threads import parse_threads

    try:
        return parse_threads(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_threads_type,
        default=None,
        metavar="N|auto",
        help="torch threads (default auto: the cores other processes leave free, re-checked "
        "every few seconds, so a busy machine does not stall the run)",
    )


def _training_arguments(
    p: argparse.ArgumentParser, config_help: str = "TOML config (defaults apply without one)"
) -> None:
    """The arguments 'train' and 'distill' share."""
    p.add_argument("config", nargs="?", help=config_help)
    _threads_argument(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable); "
        "--set data.strict=false skips bad data items instead of stopping; an empty value (or "
        "none) unsets an optional field: --set data.dev= trains without dev data",
    )
    p.add_argument("--output-dir", help="override output_dir")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from output_dir/last.pt (an error when there is none)",
    )
    resume.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="continue from output_dir/last.pt when it exists, else start fresh",
    )


def build_parser() -> argparse.ArgumentParser:
    from gpner import __version__
    from gpner.data.readers import READERS, SCHEMES
    from gpner.data.writers import WRITE_FORMATS

    formats = ", ".join(READERS)
    schemes = ", ".join(SCHEMES)
    parser = _Parser(
        prog="gpner",
        description=_DESCRIPTION,
        epilog="Run 'gpner COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"gpner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        epilog_fn=_train_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _training_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "distill",
        help="train a student model on gold spans and a teacher model's span logits",
        description=_DISTILL_DESCRIPTION,
        epilog_fn=_train_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "teacher",
        help="the teacher: a trained model directory, or an .onnx file from 'gpner export' "
        "(run by onnxruntime); it must have the training data's label set",
    )
    _training_arguments(p, "the student's TOML config (defaults apply without one)")
    p.add_argument(
        "--unlabeled",
        metavar="FILE",
        help="a text file, one text per line: texts that train the student on the teacher's "
        "signal alone (no cross-entropy); sets distill.unlabeled",
    )
    p.set_defaults(func=_distill)

    p = sub.add_parser("evaluate", help="entity-level scores of a checkpoint on labelled data")
    p.add_argument(
        "checkpoint", help="a trained model directory (output_dir/best of a training run)"
    )
    p.add_argument("data", help="labelled data (a file; brat: a directory)")
    p.add_argument("--format", help=f"format of the data: {formats}; detected when omitted")
    p.add_argument("--scheme", help=f"tag scheme of column formats ({schemes})")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip bad items (their number is reported) instead of stopping at the first",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (a model directory) or onnxruntime (an .onnx file from 'gpner export', "
        "needs gpner[onnx])",
    )
    _threads_argument(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict",
        help="predict entity spans: one output record per input text",
        description="Predict the entity spans of texts with a trained model.",
        epilog=_PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="a trained model directory (output_dir/best of a training run)"
    )
    p.add_argument(
        "input",
        nargs="?",
        default="-",
        help="texts: a .txt file with one text per line (an empty line gets an empty record), "
        "- for standard input (the default), or a data file in a --from format",
    )
    p.add_argument(
        "--from",
        dest="from_format",
        metavar="FORMAT",
        help=f"format of a data-file input: {formats}, or text; detected when omitted",
    )
    p.add_argument("--scheme", help=f"tag scheme of a column-format input ({schemes})")
    p.add_argument(
        "--format",
        "--to",
        dest="to_format",
        default="jsonl",
        type=_output_format,
        metavar="FORMAT",
        help=f"output format: {', '.join(WRITE_FORMATS)} (default jsonl; see below)",
    )
    p.add_argument("--output", "-o", help="output file (brat: a directory); default stdout")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="predict the spans whose score (logit) is above this; default: the model's "
        "training threshold (0, probability 0.5); lower it for recall, raise it for precision",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="texts per forward pass (default 64; larger is faster until memory runs out)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="texts read, predicted, written and flushed at a time (default 1024); memory is "
        "bounded by it and a killed run loses at most one chunk",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run: keep the complete records in --output, skip their inputs "
        "and append the rest",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip bad items of a data-file input instead of stopping at the first",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (a model directory) or onnxruntime (an .onnx file from 'gpner export', "
        "needs gpner[onnx])",
    )
    _threads_argument(p)
    p.set_defaults(func=_predict)

    from gpner.serve.limits import Limits

    limits = Limits()
    p = sub.add_parser("serve", help="serve a model over HTTP: JSON API and a page (gpner[serve])")
    p.add_argument("model", help="a trained model (what gpner.load reads)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument(
        "--max-batch", type=int, default=32, help="most texts gathered for one model call"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="how long a model call waits to gather more texts (default 2)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=4096,
        help="most texts waiting for the model; past it requests get 503 (default 4096)",
    )
    p.add_argument("--max-texts", type=int, default=limits.max_texts, help="most texts per request")
    p.add_argument(
        "--max-chars", type=int, default=limits.max_chars, help="most characters per text"
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=limits.max_request_bytes,
        help="largest request body",
    )
    p.add_argument(
        "--min-threshold",
        type=float,
        default=limits.min_threshold,
        help=f"lowest threshold a request may ask for (default {limits.min_threshold:g})",
    )
    p.add_argument(
        "--max-spans",
        type=int,
        default=limits.max_spans,
        help=f"most predicted spans per text in an answer (default {limits.max_spans})",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--log-level", default="info", help="uvicorn's log level")
    p.set_defaults(func=_serve)

    p = sub.add_parser("render", help="predict and write an HTML page that shows the entities")
    p.add_argument("model", help="a trained model (what gpner.load reads)")
    p.add_argument(
        "input", help="a .txt file (one text per line), a data file (see --from), or - for stdin"
    )
    p.add_argument("--output", "-o", required=True, help="the HTML file to write")
    p.add_argument(
        "--from",
        dest="from_format",
        metavar="FORMAT",
        help=f"input format: text, {formats}; detected when omitted",
    )
    p.add_argument("--scheme", help=f"tag scheme of column formats ({schemes})")
    p.add_argument("--lenient", action="store_true", help="skip bad data items")
    p.add_argument("--threshold", type=float, default=None, help="default: the model's")
    p.add_argument("--flat", action="store_true", default=None, help="no overlapping spans")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default 64)")
    p.add_argument("--title", default="gpner", help="the page's title")
    _threads_argument(p)
    p.set_defaults(func=_render)

    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX (encoder + head to logits) for onnxruntime",
    )
    p.add_argument("checkpoint", help="a trained model directory")
    p.add_argument("output", help="the .onnx file to write (self-contained: labels, tokenizer)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="dynamic int8 quantisation of the weights, per output channel, after --fuse; "
        "products that read a GELU stay fp32 (smaller, faster on CPU; check the F1)",
    )
    p.add_argument(
        "--calibrate",
        metavar="DATA",
        help="with --int8: keep only --fp32-budget of the GELU-fed products fp32, the ones whose "
        "int8 moves the model's span scores most on these texts (training data, not the "
        "evaluation set): faster int8",
    )
    p.add_argument(
        "--calibrate-texts",
        type=int,
        default=1024,
        metavar="N",
        help="the first N texts of --calibrate (default 1024)",
    )
    p.add_argument(
        "--fp32-budget",
        type=int,
        default=1,
        metavar="N",
        help="with --calibrate: products kept fp32 (default 1)",
    )
    p.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply onnxruntime's transformer fusions (bias + GELU; attention where it matches): "
        "faster, but the file then runs on onnxruntime only (default: with --int8 only)",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("convert", help="convert data between formats (default: to gpner's jsonl)")
    p.add_argument("input", help="data file (brat: a directory)")
    p.add_argument("output", help="output file (brat: a directory)")
    p.add_argument(
        "--from",
        dest="from_format",
        metavar="FORMAT",
        help=f"input format: {formats}; detected from the content when omitted",
    )
    p.add_argument(
        "--to",
        dest="to_format",
        default="jsonl",
        type=_output_format,
        metavar="FORMAT",
        help=f"output format: {', '.join(WRITE_FORMATS)} (default jsonl)",
    )
    p.add_argument("--scheme", help=f"tag scheme of column formats ({schemes})")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip bad items (their number is reported) instead of stopping at the first",
    )
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "convert-checkpoint",
        help="convert a gpner <= 0.1 pickle checkpoint (best.pt -> model directory, "
        "last.pt -> resume state)",
    )
    p.add_argument("old", help="the old .pt file")
    p.add_argument("new", help="the model directory (or resume state file) to write")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="fully unpickle the file if the restricted load refuses it (runs code it embeds)",
    )
    p.set_defaults(func=_convert_checkpoint)
    return parser


# -------------------------------------------------------------------------------------- main


def _show_warning(command: str):
    from gpner.data.readers import ReadWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ReadWarning):
            print(f"gpner: warning: {_as_flags(str(message), command)}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    from gpner.checkpoints import CheckpointError
    from gpner.config import ConfigError
    from gpner.data.readers import ReadError

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(args.command)
        try:
            if args.command in ("evaluate", "predict", "render"):
                from gpner.threads import cores_in_use

                with cores_in_use(args.threads):
                    return args.func(args)
            return args.func(args)
        except (ConfigError, CheckpointError, ReadError, CLIError, FileNotFoundError) as error:
            print(f"gpner: error: {_as_flags(str(error), args.command)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # One line, the shell's status for SIGINT. A training run keeps its last.pt (written
            # atomically at each epoch's end) for --resume.
            print(f"gpner: {args.command} interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
