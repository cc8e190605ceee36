"""The commands behind :mod:`gpner.cli`: each reads its parsed arguments, calls the library and
prints or writes the result. The parser and the entry point stay in :mod:`gpner.cli`; handlers
keep their leading underscore, as they are the CLI's and nobody else's."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["CLIError"]


class CLIError(Exception):
    """A usage problem: printed as one ``gpner: error:`` line, exit status 2."""


# What each command calls read()'s arguments format=, scheme= and strict=False.
_ARG_NAMES = {
    "train": ("data.format", "data.scheme", "data.strict = false"),
    "distill": ("data.format", "data.scheme", "data.strict = false"),
    "evaluate": ("--format", "--scheme", "--lenient"),
    "predict": ("--from", "--scheme", "--lenient"),
    "convert": ("--from", "--scheme", "--lenient"),
    "render": ("--from", "--scheme", "--lenient"),
    "serve": ("--from", "--scheme", "--lenient"),
}


def _as_flags(message: str, command: str) -> str:
    """Library messages name Python arguments (``format=``); the command line names its flags."""
    if command not in _ARG_NAMES:  # commands that read no data files
        return message
    fmt, scheme, lenient = _ARG_NAMES[command]
    sep = " = " if command in ("train", "distill") else " "
    message = re.sub(r"\bformat=(?![\w'\"])", fmt, message)
    message = re.sub(r"\bscheme=(['\"]?)([\w-]+)\1", rf"{scheme}{sep}\2", message)
    message = re.sub(r"\bscheme=", scheme, message)
    return message.replace("strict=False", lenient)


def _read_data(path: str, fmt: str | None, scheme: str | None, strict: bool = True):
    """``read`` for the CLI: a bad format or scheme name is a usage error, not a traceback."""
    from gpner.data.paths import resolve
    from gpner.data.readers import ReadError, read

    try:
        return read(resolve(path), format=fmt, scheme=scheme, strict=strict)
    except ReadError:
        raise
    except ValueError as error:
        raise CLIError(str(error)) from None


def _load_model(path: str, backend: str | None = None, command: str = "predict"):
    """The model at ``path`` (a model directory; an .onnx file for onnxruntime); a missing or
    unreadable one is a usage error. ``backend`` None: the command has no --backend option."""
    import gpner

    if not Path(path).exists():
        raise CLIError(f"no such model: {path}")
    if backend is None and Path(path).suffix == ".onnx":
        raise CLIError(
            f"{path} is an ONNX export; gpner {command} takes a model directory (output_dir/best "
            "of a training run). gpner predict and gpner evaluate run .onnx files with "
            "--backend onnxruntime"
        )
    backend = backend or "torch"
    try:
        return gpner.load(path, backend=backend)
    except ImportError as error:
        raise CLIError(f"--backend {backend} needs: pip install gpner[onnx] ({error})") from None
    except ValueError as error:
        raise CLIError(str(error)) from None


# ------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from gpner.config import load_config

    return _run_training(load_config(args.config, args.set), args)


def _distill(args: argparse.Namespace) -> int:
    from gpner.config import load_config

    config = load_config(args.config, args.set)
    config.distill.teacher = args.teacher
    if args.unlabeled is not None:
        config.distill.unlabeled = args.unlabeled
    return _run_training(config, args)


def _run_training(config, args: argparse.Namespace) -> int:
    from gpner.training import train

    if args.output_dir:
        config.output_dir = args.output_dir
    if args.threads is not None:
        config.train.num_threads = args.threads
    resume = "if_exists" if args.resume_if_exists else args.resume
    result = train(config, resume=resume)
    if not result.main_process:  # data parallel: rank 0 evaluated, rank 0 reports
        return 0
    summary = {
        "best_dev_f1": result.best_f1,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "checkpoint": str(result.best_path),
        "test_f1": result.test_metrics["micro"]["f1"] if result.test_metrics else None,
        "skipped_items": result.info.get("skipped_items", 0),
    }
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------- evaluate


def _format_mismatch(path: str, fmt: str | None) -> str | None:
    """When ``--format fmt`` was given and the content looks like another format: saying so."""
    from gpner.data.paths import resolve
    from gpner.data.readers import READERS, ReadError, detect_format

    if fmt is None:
        return None
    try:
        detected = detect_format(resolve(path))
    except (ReadError, OSError, ValueError):
        return None
    if READERS.canonical(detected) == READERS.canonical(fmt):
        return None
    return (
        f"{path} does not look like {fmt} data (it has no gold entities as {fmt}); its content "
        f"looks like {detected}: pass --format {detected}, or leave --format out to detect it"
    )


def _check_gold(examples, labels, path: str, fmt: str | None = None) -> dict[str, int]:
    """Fail on data that cannot be scored; returns the gold labels the model never saw."""
    if not examples:
        raise CLIError(f"{path}: no examples to evaluate")
    gold = Counter(span.label for ex in examples for span in ex.spans)
    mismatch = None if gold else _format_mismatch(path, fmt)
    if mismatch:
        raise CLIError(mismatch)
    if not gold:
        raise CLIError(
            f"{path} has no gold entities in its {len(examples)} examples, so there is nothing "
            "to score against (every score would be 0); evaluate needs labelled data (use "
            "'gpner predict' for unlabelled text)"
        )
    unseen = {label: n for label, n in sorted(gold.items()) if label not in set(labels)}
    if len(unseen) == len(gold):
        raise CLIError(
            f"none of the gold labels of {path} ({', '.join(sorted(gold))}) is a label the model "
            f"was trained on ({', '.join(labels)}); is this the right model and data?"
        )
    if unseen:
        shown = ", ".join(f"{label} ({n})" for label, n in unseen.items())
        print(
            f"gpner: warning: {path}: gold labels the model never saw: {shown}; their "
            f"{sum(unseen.values())} of {sum(gold.values())} gold spans can only count as misses",
            file=sys.stderr,
        )
    return unseen


def _evaluate(args: argparse.Namespace) -> int:
    from gpner.data.report import collect_read_report
    from gpner.inference import evaluate

    if args.data == "-" or (args.format is None and Path(args.data).suffix == ".txt"):
        raise CLIError(
            f"{args.data}: plain text carries no gold entities; evaluate needs labelled data "
            "(name its format with --format)"
        )
    model = _load_model(args.checkpoint, args.backend)
    with collect_read_report() as report:
        examples = _read_data(args.data, args.format, args.scheme, strict=not args.lenient)
    unseen = _check_gold(examples, model.labels, args.data, args.format)
    metrics = evaluate(model, examples, args.batch_size)
    metrics["skipped_items"] = report.skipped
    if unseen:
        metrics["unseen_gold_labels"] = unseen
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    micro = metrics["micro"]
    skipped = f" ({report.skipped} bad items skipped)" if report.skipped else ""
    print(
        f"micro P {micro['precision']:.4f} R {micro['recall']:.4f} F1 {micro['f1']:.4f} "
        f"on {len(examples)} examples{skipped}",
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------------------- predict


def _file_lines(path: Path):
    from gpner.streaming import text_lines

    with open(path, "rb") as f:
        yield from text_lines(f, str(path))


def _predict_texts(args: argparse.Namespace, progress: bool):
    """``(texts, total)``: a lazy iterator of input texts and their number if known cheaply."""
    from gpner.data.paths import not_found, resolve
    from gpner.streaming import count_lines, text_lines

    if args.input == "-":
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        return text_lines(stream), None
    path = resolve(args.input)
    if args.from_format == "text" or (args.from_format is None and path.suffix == ".txt"):
        if not path.is_file():
            raise FileNotFoundError(f"no such input file: {not_found(args.input)}")
        return _file_lines(path), (count_lines(path) if progress else None)
    examples = _read_data(args.input, args.from_format, args.scheme, strict=not args.lenient)
    return (ex.text for ex in examples), len(examples)


def _predict(args: argparse.Namespace) -> int:
    from gpner import __version__
    from gpner.data.readers import ReadError
    from gpner.data.writers import open_writer
    from gpner.inference import predict
    from gpner.streaming import predict_stream, progress_bar

    if args.resume and args.output in (None, "-"):
        raise CLIError("--resume continues an output file: pass it with -o/--output")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise CLIError("--chunk-size and --batch-size must be positive")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    texts, total = _predict_texts(args, show)
    model = _load_model(args.checkpoint, args.backend)
    options = {"model_version": f"gpner {__version__}"} if args.to_format == "label-studio" else {}
    try:
        writer = open_writer(
            args.output, args.to_format, labels=model.labels, append=args.resume, **options
        )
    except ValueError as error:
        raise CLIError(str(error)) from None

    def predict_batch(batch: list[str]):
        return predict(model, batch, args.batch_size, threshold=args.threshold)

    resumed = writer.done
    with writer, progress_bar(total, show) as bar:
        try:
            written = predict_stream(predict_batch, texts, writer, args.chunk_size, bar)
        except ReadError:
            raise
        except ValueError as error:
            raise CLIError(f"{args.output}: {error}") from None
    where = args.output if args.output not in (None, "-") else "standard output"
    after = f" after the {resumed} already there" if resumed else ""
    print(f"wrote {written} {args.to_format} records to {where}{after}", file=sys.stderr)
    return 0


def _output_format(value: str) -> str:
    from gpner.data.readers import output_format

    try:
        return output_format(value)
    except ValueError as error:
        hint = ": pass it with --from" if str(error).endswith("input format") else ""
        raise argparse.ArgumentTypeError(f"{error}{hint}") from None


_PREDICT_EPILOG = """\
output records (jsonl, the default), one per input text, in input order:
  {"text": "张三在上海", "spans": [{"start": 0, "end": 2, "label": "PER", "text": "张三",
   "score": 3.1416, "probability": 0.9586}]}
  start/end are half-open character offsets (code points): text[start:end] is the mention.
  score is the span's raw GlobalPointer logit; a span is predicted when score > threshold.
  probability is sigmoid(score): the same ranking on a 0-1 scale (0.5 at the default
  threshold 0), not a calibrated probability.
other formats, for importing predictions as pre-annotations into an annotation tool:
  label-studio  a JSON array of tasks with "predictions"; each region's score is its probability
  doccano       JSONL {"text", "label": [[start, end, TYPE]]}, UTF-16 offsets; no place for scores
  brat          a directory of .txt/.ann pairs (-o DIR) with annotation.conf; no place for scores
streaming: text input (a .txt file or stdin) is read, predicted and written --chunk-size texts at
a time and flushed, so memory does not grow with it (a data file in a --from format is read
whole first); a killed run keeps what it wrote, and the same command with --resume skips the
texts whose records are complete and appends the rest.
"""


# ----------------------------------------------------------------------------------- convert


def _convert(args: argparse.Namespace) -> int:
    from gpner.data.readers import ReadError, convert
    from gpner.data.report import collect_read_report

    with collect_read_report() as report:
        try:
            count = convert(
                args.input,
                args.output,
                args.from_format,
                scheme=args.scheme,
                strict=not args.lenient,
                to_format=args.to_format,
            )
        except ReadError:
            raise
        except ValueError as error:
            raise CLIError(str(error)) from None
    skipped = f" ({report.skipped} bad items skipped)" if report.skipped else ""
    print(f"wrote {count} examples to {args.output}{skipped}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ serve, render


def _serve(args: argparse.Namespace) -> int:
    try:
        from gpner.serve.run import serve
    except ImportError as error:
        raise CLIError(str(error)) from None
    from gpner.serve.limits import Limits

    model = _load_model(args.model, command="serve")
    limits = Limits(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_request_bytes=args.max_request_bytes,
        min_threshold=args.min_threshold,
        max_spans=args.max_spans,
    )
    try:
        serve(
            model,
            args.host,
            args.port,
            limits,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            threads=args.threads,
            log_level=args.log_level,
        )
    except (ImportError, ValueError) as error:  # ValueError: a setting out of its range
        raise CLIError(str(error)) from None
    return 0


def _render(args: argparse.Namespace) -> int:
    from gpner.inference import predict
    from gpner.render import render_page

    texts, _ = _predict_texts(args, progress=False)
    texts = list(texts)
    model = _load_model(args.model, command="render")
    predictions = predict(model, texts, args.batch_size, threshold=args.threshold, flat=args.flat)
    page = render_page(texts, predictions, model.labels, args.title)
    Path(args.output).write_text(page, encoding="utf-8")
    count = sum(len(p) for p in predictions)
    print(f"wrote {count} spans in {len(texts)} texts to {args.output}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from gpner.export import export_onnx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise CLIError(f"export needs: pip install gpner[onnx] ({error})") from None
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise CLIError(f"export needs: pip install gpner[onnx] ({error})") from None
    options = {}
    if args.calibrate is not None:
        if not args.int8:
            raise CLIError("--calibrate chooses what int8 keeps fp32: pass it with --int8")
        if args.calibrate_texts < 1 or args.fp32_budget < 0:
            raise CLIError("--calibrate-texts must be positive and --fp32-budget non-negative")
        examples = _read_data(args.calibrate, None, None)[: args.calibrate_texts]
        options = {"calibration": [ex.text for ex in examples], "fp32_budget": args.fp32_budget}
    model = _load_model(args.checkpoint, command="export")
    path = export_onnx(
        model, args.output, quantize="int8" if args.int8 else None, fuse=args.fuse, **options
    )
    fused = args.int8 if args.fuse is None else args.fuse
    kind = ("int8-quantised " if args.int8 else "") + ("fused " if fused else "")
    print(
        f"wrote the {kind}ONNX model {path} ({path.stat().st_size / 2**20:.1f} MiB)",
        file=sys.stderr,
    )
    if args.int8:
        from gpner.quantize import quantization_record

        record = quantization_record(path)
        kept = record["fp32_products"]
        if "calibration" in record:
            how = f"chosen on {record['calibration']['texts']} texts of {args.calibrate}"
        else:
            how = "every product that reads a GELU" if kept else "no product reads a GELU"
        print(f"products kept fp32: {', '.join(kept) or 'none'} ({how})", file=sys.stderr)
    return 0


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from gpner.checkpoints import convert_checkpoint

    print(
        f"gpner: warning: {args.old} is a pickle file. It is read with torch.load(weights_only="
        "True), which runs no code; only with --trust-pickle is it fully unpickled, which runs "
        "any code it embeds. Convert only checkpoints you trust.",
        file=sys.stderr,
    )
    kind = convert_checkpoint(args.old, args.new, trust=args.trust_pickle)
    what = "model directory" if kind == "model" else "resume state"
    print(f"wrote the {what} {args.new}", file=sys.stderr)
    return 0
