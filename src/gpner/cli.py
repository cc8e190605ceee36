"""Command line: a thin shell over the library (``gpner train|evaluate|predict|convert``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from gpner.config import load_config
    from gpner.training import train

    config = load_config(args.config, args.set)
    if args.output_dir:
        config.output_dir = args.output_dir
    result = train(config, resume=args.resume)
    print(
        json.dumps(
            {
                "best_dev_f1": result.best_f1,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "checkpoint": str(result.best_path),
                "test_f1": result.test_metrics["micro"]["f1"] if result.test_metrics else None,
            }
        )
    )
    return 0


def _read_inputs(path: str, fmt: str | None, scheme: str | None):
    from gpner.data.paths import resolve
    from gpner.data.readers import read
    from gpner.data.spans import Example

    if path == "-":
        return [Example(line.rstrip("\n"), []) for line in sys.stdin if line.strip()]
    if fmt in (None, "text") and Path(path).suffix == ".txt" or fmt == "text":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [Example(line, []) for line in lines if line.strip()]
    return read(resolve(path), format=fmt, scheme=scheme)


def _evaluate(args: argparse.Namespace) -> int:
    from gpner.inference import evaluate
    from gpner.model import load

    model = load(args.checkpoint)
    examples = _read_inputs(args.data, args.format, args.scheme)
    metrics = evaluate(model, examples, args.batch_size)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    micro = metrics["micro"]
    print(
        f"micro P {micro['precision']:.4f} R {micro['recall']:.4f} F1 {micro['f1']:.4f} "
        f"on {len(examples)} examples",
        file=sys.stderr,
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from gpner.inference import predict_examples
    from gpner.model import load

    model = load(args.checkpoint)
    examples = _read_inputs(args.input, args.format, args.scheme)
    predictions = predict_examples(model, examples, args.batch_size, threshold=args.threshold)
    with contextlib.ExitStack() as stack:
        out = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output
            else sys.stdout
        )
        for example, spans in zip(examples, predictions):
            record = {
                "text": example.text,
                "spans": [
                    {
                        "start": s.start,
                        "end": s.end,
                        "label": s.label,
                        "text": example.text[s.start : s.end],
                        "score": round(score, 4),
                    }
                    for s, score in spans
                ],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from gpner.data.readers import convert

    count = convert(args.input, args.output, args.from_format, scheme=args.scheme)
    print(f"wrote {count} examples to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a TOML config")
    p.add_argument("config", nargs="?", help="TOML config (defaults apply without one)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    p.set_defaults(func=_train)

    formats = "cluener, cmeee, conll, conll-chars, weibo, jsonl (auto-detected when omitted)"
    p = sub.add_parser("evaluate", help="entity-level scores of a checkpoint on a data file")
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--format", help=formats)
    p.add_argument("--scheme", help="tag scheme of column formats (IOB1, IOB2, BIOES, BMES)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="predict spans; writes JSON lines")
    p.add_argument("checkpoint")
    p.add_argument(
        "input",
        nargs="?",
        default="-",
        help="a data file, a .txt file (one text per line) or - for stdin",
    )
    p.add_argument("--format", help=formats + ", or text")
    p.add_argument("--scheme")
    p.add_argument("--output", "-o", help="output file (default stdout)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_predict)

    p = sub.add_parser("convert", help="convert a data file to gpner's jsonl format")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--from", dest="from_format", required=True, help=formats)
    p.add_argument("--scheme")
    p.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gpner.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"gpner: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
