"""`python -m scoring`: score, summarize, human-baseline, convert, fetch-spice, report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract import AUTO_FORMAT, COMPARISON_CSV, SUMMARY_JSON
from contract.dataset import add_data_format_arguments
from contract.lifetime import follow_parent
from scoring.engine import MIN_BOOTSTRAP, ScoringOptions, check_options, score_models
from scoring.java import ScoringError
from scoring.metrics import BY_KEY, LEFT_OUT, METRICS
from scoring.resources import METEOR_HEAP

METRIC_NAMES = tuple(BY_KEY)


def _model_ids(values: Sequence[str]) -> dict[str, str]:
    ids = {}
    for value in values:
        name, sep, model_id = value.partition("=")
        if not sep or not name or not model_id:
            raise ScoringError(f"--model-id expects NAME=ID, got {value!r}")
        ids[name] = model_id
    return ids


def _add_scoring_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, required=True, help="where the result files go")
    parser.add_argument("--spice-jars", type=Path, default=None, help="folder with the Stanford CoreNLP 3.6.0 jars")
    parser.add_argument("--spice-cache", type=Path, default=None, help="SPICE parse cache folder (optional)")
    parser.add_argument("--spice-workers", type=int, default=None, help="SPICE parsing JVMs (default: per CPU)")
    parser.add_argument("--spice-heap", type=int, default=None, metavar="MB", help="SPICE JVM heap (default: sized)")
    parser.add_argument("--spice-timeout", type=float, default=None, metavar="S", help="SPICE time limit (seconds)")
    parser.add_argument("--bootstrap", type=int, default=MIN_BOOTSTRAP, help="bootstrap resamples (>= 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--meteor-heap", default=METEOR_HEAP, help=f"METEOR JVM heap (-Xmx; default {METEOR_HEAP})")
    parser.add_argument(
        "--metrics",
        default="all",
        metavar="LIST",
        help=f"metrics to compute: comma list of {', '.join(METRIC_NAMES)}, or all (default); -NAME leaves one out, "
        "e.g. all,-spice. A metric left out is null in the metrics file, with the reason",
    )


def _add_data_columns(parser: argparse.ArgumentParser) -> None:
    add_data_format_arguments(parser)
    parser.add_argument("--image-column", default="url", help="data file column with the image (default: url)")
    parser.add_argument("--query-column", default="query", help="data file column with the query (default: query)")
    parser.add_argument(
        "--annotation-column", default="annotation", help="data file column with one caption (default: annotation)"
    )


def _columns(args: argparse.Namespace) -> dict[str, Any]:
    """How to read --data: CSV column names, --data-format, --split."""
    return {
        "image_column": args.image_column,
        "query_column": args.query_column,
        "annotation_column": args.annotation_column,
        "data_format": None if args.data_format == AUTO_FORMAT else args.data_format,
        "split": args.split,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scoring", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score one or many models' predictions in one process")
    score.add_argument("--predictions", type=Path, nargs="+", help="<model>_predictions.jsonl files")
    score.add_argument(
        "--coco-results",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a COCO caption results file [{image_id, caption}] made by another tool (repeat: one per model); scored "
        "against --annotations over the images it covers, as COCOEvalCap does",
    )
    score.add_argument("--annotations", type=Path, help="the COCO caption annotations file --coco-results refer to")
    score.add_argument(
        "--name",
        action="append",
        default=[],
        help="the model name of each --coco-results file, in order (default: the file's name without .json)",
    )
    score.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data file (any format, docs/DATA.md); predictions must match its samples",
    )
    score.add_argument("--intersection", action="store_true", help="score only samples in both data and predictions")
    score.add_argument("--limit", type=int, help="score only the data file's first N samples (as runner --limit)")
    score.add_argument(
        "--merge-shards", type=int, default=1, metavar="N", help="first merge each model's N shard files (--data)"
    )
    score.add_argument(
        "--skip-incomplete", action="store_true", help="leave out (and name) a model whose shards are incomplete"
    )
    score.add_argument("--model-id", action="append", default=[], metavar="NAME=ID", help="model id without manifest")
    score.add_argument("--report", action="store_true", help="build the HTML report afterwards")
    score.add_argument(
        "--no-human-baseline",
        action="store_true",
        help="do not score the leave-one-out human agreement (each sample's first reference against the others), "
        "which --data otherwise adds as a reference row wherever samples have two or more references",
    )
    score.add_argument(
        "--rescore",
        action="store_true",
        help="score every model again even when its recorded inputs (predictions, data, options, tool versions) "
        "are unchanged",
    )
    _add_data_columns(score)
    _add_scoring_options(score)

    summarize = commands.add_parser("summarize", help="rebuild all_models_summary.json and comparison.csv")
    summarize.add_argument("results_dir", type=Path)
    summarize.add_argument("--bootstrap", type=int, default=MIN_BOOTSTRAP)
    summarize.add_argument("--seed", type=int, default=0)

    human = commands.add_parser("human-baseline", help="leave-one-out human agreement (first reference vs rest)")
    human.add_argument("--data", type=Path, required=True)
    human.add_argument("--name", default="human-baseline", help="model name used for the result files")
    _add_data_columns(human)
    _add_scoring_options(human)

    fetch = commands.add_parser(
        "fetch-spice",
        help="get the jars SPICE needs (Stanford CoreNLP 3.6.0, Rhino), verified against pinned SHA-256",
        description="Each jar comes from DEST when already there and verified, else from a --from folder, else "
        "from Maven Central through Maven's client (`mvn`, when on PATH), else by a direct download.",
    )
    fetch.add_argument("--dest", type=Path, default=None, help="folder (default: --spice-jars' default folder)")
    fetch.add_argument("--from", dest="sources", type=Path, action="append", default=[], metavar="DIR",
                       help="a folder that may already hold the jars (copied, verified; no network)")  # fmt: skip
    fetch.add_argument("--offline", action="store_true", help="never use the network (only DEST and --from)")

    convert = commands.add_parser(
        "convert", help="another harness's caption outputs as COCO results (+ annotations) for score --coco-results"
    )
    convert.add_argument("input", type=Path, help="lmms-eval's --log_samples file, or VLMEvalKit's prediction table")
    convert.add_argument("--from", dest="source", required=True, choices=("lmms-eval", "vlmevalkit"))
    convert.add_argument("--results", type=Path, required=True, help="the COCO results file to write")
    convert.add_argument(
        "--annotations", type=Path, help="also write a COCO annotations file of the references the input carries"
    )

    report = commands.add_parser("report", help="build report.html from a results folder")
    report.add_argument("results_dir", type=Path)
    return parser


def _options(args: argparse.Namespace) -> ScoringOptions:
    return ScoringOptions(
        spice_jars=args.spice_jars,
        spice_cache=args.spice_cache,
        bootstrap=args.bootstrap,
        seed=args.seed,
        meteor_heap=args.meteor_heap,
        metrics=args.metrics,
        spice_workers=args.spice_workers,
        spice_heap_mb=args.spice_heap,
        spice_timeout=args.spice_timeout,
    )


def _build_report(results_dir: Path, models: Sequence[str] | None = None) -> Path:
    from scoring.report import build_report  # imported only when a report is asked for

    return build_report(results_dir, models=models)


def _score_and_write(models: list, args: argparse.Namespace) -> list[str]:
    """Score, write every result file, print one line per model; returns the names of the models scored."""
    from scoring.outputs import metric_line, write_model_outputs, write_summary

    started = time.perf_counter()
    results = score_models(models, _options(args), log=lambda line: print(line, flush=True))
    print("scores x100 (the files keep 0-1):", flush=True)
    warned: dict[str, list[str]] = {}  # a warning many models share is printed once
    for result in results:
        path = write_model_outputs(result, args.output_dir)
        metrics = result.metrics_file()
        print(metric_line(metrics), flush=True)
        print(f"  wrote {path}", flush=True)
        for warning in metrics.warnings:
            warned.setdefault(warning, []).append(metrics.model_name)
    left_out = [m.key for m in METRICS if results and results[0].unavailable.get(m.key) == LEFT_OUT]
    if left_out:
        print(f"{LEFT_OUT} (null in the files): {', '.join(left_out)}", flush=True)
    models_only = [r for r in results if not r.model.human_baseline]
    for warning, names in warned.items():
        scope = "every model" if len(names) == len(models_only) > 1 else ", ".join(names)
        print(f"WARNING ({scope}): {warning}", flush=True)
    write_summary(args.output_dir, args.bootstrap, args.seed)
    print(f"scored {len(results)} model(s) in {time.perf_counter() - started:.1f} s; summary in {args.output_dir}")
    return [result.model.model_name for result in results]


def _numbers_options(args: argparse.Namespace, computed: tuple) -> dict[str, object]:
    """The options that change a model's numbers (scoring.freshness): recorded with them, compared on a rerun."""
    options: dict[str, object] = {
        "metrics": [m.key for m in computed],
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "limit": getattr(args, "limit", None),
        "intersection": bool(getattr(args, "intersection", False)),
    }
    options.update(_columns(args))
    return options


def _score_what_changed(models: list, args: argparse.Namespace, data_sha256: str | None, computed: tuple) -> list[str]:
    """Record each model's scoring inputs; score the models whose inputs differ from what their files record (all
    of them with --rescore). Prints what it left as it was; returns the names scored."""
    from scoring.freshness import is_up_to_date, model_inputs, tool_versions
    from scoring.outputs import write_summary

    versions = tool_versions(computed, args.spice_jars)
    options = _numbers_options(args, computed)
    for model in models:
        model.inputs = model_inputs(
            predictions=None if model.human_baseline else Path(model.source),
            data_sha256=data_sha256,
            model_id=model.model_id,
            random_weights=model.random_weights,
            options=options,
            versions=versions,
        )
    stale = [m for m in models if args.rescore or not is_up_to_date(args.output_dir, m.model_name, m.inputs)]
    fresh = [m.model_name for m in models if m not in stale]
    if fresh:
        print(
            f"scores up to date: {', '.join(fresh)} (predictions, data, options and tool versions unchanged; "
            "not rescored; --rescore scores them again)",
            flush=True,
        )
    if stale:
        return _score_and_write(stale, args)
    if not (args.output_dir / SUMMARY_JSON).is_file() or not (args.output_dir / COMPARISON_CSV).is_file():
        write_summary(args.output_dir, args.bootstrap, args.seed)
    return []


def _merge_shards(args: argparse.Namespace, dataset) -> list[Path]:  # noqa: ANN001  (contract.Dataset)
    """Each model's shard files merged into its predictions file; a model with missing samples is an error, or
    with --skip-incomplete left out with a line saying so (a shard that failed on a cluster)."""
    from contract import PREDICTIONS_JSONL
    from contract.shards import ShardError, merge_shards

    if dataset is None:
        raise ScoringError("--merge-shards needs --data (the samples, in data-file order)")
    suffix = PREDICTIONS_JSONL.replace("{model}", "")
    kept = []
    for path in args.predictions:
        model = path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem
        try:
            outcome = merge_shards(path.parent, model, args.merge_shards, dataset.samples)
        except ShardError as error:
            raise ScoringError(str(error)) from None
        if outcome.complete:
            if outcome.written:
                print(f"[{model}] {args.merge_shards} shards merged into {path.name}", flush=True)
            kept.append(path)
            continue
        what = f"its {args.merge_shards} shards lack" if args.merge_shards > 1 else "its predictions lack"
        message = f"{model}: {what} {len(outcome.missing) or 'some'} sample(s)"
        if not args.skip_incomplete:
            raise ScoringError(message + "; rerun the ablation to finish them (or pass --skip-incomplete)")
        print(f"WARNING: {message}: not scored", flush=True)
    return kept


def _score_command(args: argparse.Namespace) -> None:
    from contract import HUMAN_BASELINE, SCORING_RESULT_PREFIX, ScoringResult, file_sha256
    from scoring.inputs import human_baseline_for, limit_samples, load_data, load_model_predictions

    computed = check_options(_options(args))
    if not args.predictions:
        raise ScoringError("score needs --predictions FILE... or --coco-results FILE --annotations FILE")
    if args.annotations or args.name:
        raise ScoringError("--annotations and --name go with --coco-results (use --data with --predictions)")
    if args.limit is not None and not args.data:
        raise ScoringError("--limit needs --data (the first N samples of which file?)")
    dataset = load_data(args.data, **_columns(args)) if args.data else None
    subset = limit_samples(dataset, args.limit) if dataset is not None else None
    if subset is not None:
        print(f"scoring a subset: the first {subset.num_samples} of {subset.data_samples} samples (--limit)")
    ids = _model_ids(args.model_id)
    merging = args.merge_shards > 1 or args.skip_incomplete
    paths = _merge_shards(args, dataset) if merging else list(args.predictions)
    if not paths:
        raise ScoringError("no model has complete predictions to score")
    models = [load_model_predictions(path, dataset, args.intersection, ids, subset) for path in paths]
    human = None
    if dataset is not None and not args.no_human_baseline:
        if HUMAN_BASELINE in {model.model_name for model in models}:
            raise ScoringError(
                f"a model is named {HUMAN_BASELINE!r}, the name of the human baseline's files; rename its "
                "predictions file, or pass --no-human-baseline"
            )
        human = human_baseline_for(dataset)
        if human is None:
            print("no sample has two or more references: no human baseline")
        else:
            human.subset = subset
            models.append(human)
    data_sha256 = file_sha256(args.data) if args.data else None
    scored = _score_what_changed(models, args, data_sha256, computed)
    if args.report:  # only the models of this run: other files in the folder may be unrelated or unreadable
        print(f"report: {_build_report(args.output_dir, [m.model_name for m in models])}")
    result = ScoringResult(
        scored=scored,
        up_to_date=[m.model_name for m in models if m.model_name not in scored],
        human_baseline=human.model_name if human is not None else None,
    )
    print(SCORING_RESULT_PREFIX + result.model_dump_json(), flush=True)


def _coco_results_models(args: argparse.Namespace) -> list:
    """Each --coco-results file, one model, against --annotations (read once, as a COCO annotations file)."""
    from scoring.inputs import load_coco_results, load_data

    if args.predictions:
        raise ScoringError("--coco-results and --predictions cannot be mixed in one run")
    if not args.annotations:
        raise ScoringError("--coco-results needs --annotations FILE (the COCO annotations file the results refer to)")
    if args.data or args.limit is not None or args.intersection or args.merge_shards > 1 or args.skip_incomplete:
        raise ScoringError("--coco-results takes --annotations, not --data, --limit, --intersection or --merge-shards")
    if args.name and len(args.name) != len(args.coco_results):
        raise ScoringError(
            f"--name given {len(args.name)} time(s) for {len(args.coco_results)} --coco-results file(s): give one "
            "per file, in the same order, or none (each model is then named after its file)"
        )
    annotations = load_data(args.annotations, data_format="coco")
    print(f"annotations: {annotations.summary_line()}", flush=True)
    names = args.name or [None] * len(args.coco_results)
    ids = _model_ids(args.model_id)
    models = [
        load_coco_results(path, annotations, name, ids) for path, name in zip(args.coco_results, names, strict=True)
    ]
    for model in models:
        print(
            f"[{model.model_name}] {len(model.sample_ids)} of {len(annotations.samples)} annotated images have a "
            f"prediction ({model.missing} without one, not scored)",
            flush=True,
        )
    return models


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("score", "human-baseline"):
        check_options(_options(args))  # a metric that cannot be computed fails here, before any input is read
    if args.command == "score" and args.coco_results:
        models = _coco_results_models(args)
        scored = _score_and_write(models, args)
        if args.report:
            print(f"report: {_build_report(args.output_dir, scored)}")
    elif args.command == "score":
        _score_command(args)
    elif args.command == "human-baseline":
        from scoring.inputs import leave_one_out, load_data

        _score_and_write([leave_one_out(load_data(args.data, **_columns(args)), args.name)], args)
    elif args.command == "summarize":
        from scoring.outputs import write_summary

        summary = write_summary(args.results_dir, args.bootstrap, args.seed)
        print(f"summarised {len(summary.models)} model(s) in {args.results_dir}")
    elif args.command == "fetch-spice":
        from scoring.spice import configured_jar_dir, fetch_spice_jars

        dest = args.dest or configured_jar_dir(None)
        sources = [*args.sources, configured_jar_dir(None)]  # e.g. filling a build context from the user cache
        fetch_spice_jars(dest, sources, network=not args.offline, log=lambda line: print(line, flush=True))
        print(f"SPICE jars ready in {dest}")
    elif args.command == "convert":
        from scoring.convert import convert

        written, annotated = convert(args.source, args.input, args.results, args.annotations)
        print(f"wrote {args.results} ({written} captions)")
        if args.annotations:
            print(f"wrote {args.annotations} ({annotated} images with their references)")
    elif args.command == "report":
        print(_build_report(args.results_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    follow_parent()  # started by an orchestrator: die with it
    try:
        return run(argv)
    except ScoringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. fetch-spice without network, unwritable output folder
        print(f"error: {error}", file=sys.stderr)
        return 2
