"""Score one or many models in ONE process: each tool of the metric registry (scoring/metrics.py) runs once for all
models (one PTB tokenizer JVM, one METEOR JVM running while Python computes the other metrics, one SPICE run), then
every metric, its bootstrap interval and its per-query and per-group values come from the per-sample statistics."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import MetricsFile, SampleCounts, SampleScores, ScoringInputs, SubsetInfo
from scoring.cleanup import clean_prediction, normalise_text
from scoring.java import ScoringError, find_java, java_version
from scoring.metrics import (
    FILE_ORDER,
    LABELS,
    LEFT_OUT,
    METRICS,
    Metric,
    ModelTexts,
    Tool,
    ToolContext,
    ToolOutput,
    select_metrics,
    sentence_scores,
    tools_for,
)
from scoring.ptb import ptb_tokenize_documents
from scoring.resample import (
    SampleMatrix,
    bootstrap_weights,
    confidence_intervals,
    corpus_metrics,
    describe_bootstrap,
    resampling_units,
)
from scoring.resources import METEOR_HEAP

MIN_BOOTSTRAP = 1000
# Recomputing a corpus metric from the per-sample statistics must give the tool's own number.
RECOMPUTE_TOLERANCE = 1e-9
TOKENIZER = "PTBTokenizer (stanford-corenlp-3.4.1.jar) -preserveLines -lowerCase, punctuation removed"


@dataclass
class ModelPredictions:
    """One model's samples, aligned lists, in scoring order."""

    model_name: str
    model_id: str
    sample_ids: list[str]
    queries: list[str]
    raw_predictions: list[str]
    references: list[list[str]]  # as given; normalised before scoring
    errors: list[str | None]
    # The image of each sample as written in the data file (several samples may share one); None: unknown, and
    # every sample is then resampled on its own.
    images: list[str] | None = None
    missing: int = 0  # data samples without a prediction (scored only with --intersection)
    unknown: int = 0  # predictions whose sample_id is not in the data (dropped with --intersection)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None
    # Model output gets the full cleanup; a human caption (the leave-one-out baseline) only separator/whitespace
    # normalisation, like every reference.
    apply_cleanup: bool = True
    random_weights: bool = False  # a tiny random-weight checkpoint (from `<model>_run.json`)
    subset: SubsetInfo | None = None  # only the data file's first N samples were scored (--limit)
    human_baseline: bool = False  # the leave-one-out human agreement (scoring.inputs.leave_one_out), not a model
    inputs: ScoringInputs | None = None  # what its scores are computed from (scoring.freshness), recorded with them
    # Each sample's group in the data file (NoCaps' domain, a JSONL "group"); None: the data set has no groups.
    groups: list[str | None] | None = None


@dataclass
class ScoringOptions:
    spice_jars: Path | None = None
    spice_cache: Path | None = None
    bootstrap: int = MIN_BOOTSTRAP
    seed: int = 0
    meteor_heap: str = METEOR_HEAP
    work_dir: Path | None = None
    metrics: str | None = None  # --metrics: which metrics to compute (scoring.metrics.select_metrics); None: all
    spice_workers: int | None = None  # parsing JVMs (default: one per CPU, as the memory allows)
    spice_heap_mb: int | None = None  # default: sized from the longest caption (scoring.spice.spice_heap_mb)
    spice_timeout: float | None = None


@dataclass
class ModelResult:
    model: ModelPredictions
    predictions: list[str]  # cleaned, as scored
    references: list[list[str]]  # normalised
    computed: tuple[Metric, ...]  # the metrics computed (the others are left out: None)
    metrics: dict[str, float | None]
    matrix: SampleMatrix
    sentence: dict[str, list[float]]  # per-sample scores of the computed metrics that have one
    counts: SampleCounts
    signature: dict[str, str]
    unavailable: dict[str, str]
    warnings: list[str]
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    per_query: dict[str, dict[str, float | None]] = field(default_factory=dict)
    per_group: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def metrics_file(self) -> MetricsFile:
        return MetricsFile(
            model_name=self.model.model_name,
            model_id=self.model.model_id,
            num_samples=len(self.predictions),
            metrics=self.metrics,
            ci=self.ci,
            per_query=self.per_query,
            per_group=self.per_group,
            counts=self.counts,
            signature=self.signature,
            unavailable=self.unavailable,
            warnings=self.warnings,
            random_weights=self.model.random_weights,
            subset=self.model.subset,
            human_baseline=self.model.human_baseline,
            inputs=self.model.inputs,
        )

    def sample_scores(self) -> list[SampleScores]:
        with_sentence = [m.key for m in METRICS if m.sentence is not None]
        rows = []
        for index, sample_id in enumerate(self.model.sample_ids):
            rows.append(
                SampleScores(
                    sample_id=sample_id,
                    image=self.model.images[index] if self.model.images is not None else None,
                    query=self.model.queries[index],
                    prediction=self.predictions[index],
                    raw_prediction=self.model.raw_predictions[index],
                    error=self.model.errors[index],
                    references=self.references[index],
                    scores={key: self.sentence[key][index] if key in self.sentence else None for key in with_sentence},
                    stats={key: block[index].tolist() for key, block in self.matrix.stats.items()},
                )
            )
        return rows


def _check_inputs(models: Sequence[ModelPredictions], options: ScoringOptions) -> None:
    names = [model.model_name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScoringError(f"model name(s) given more than once: {duplicates}")
    for model in models:
        if not model.sample_ids:
            raise ScoringError(f"{model.source or model.model_name}: no samples to score")
        if model.images is not None and len(model.images) != len(model.sample_ids):
            raise ScoringError(f"{model.source or model.model_name}: one image per sample expected")
        for sample_id, refs in zip(model.sample_ids, model.references, strict=True):
            if not any(normalise_text(ref) for ref in refs):
                raise ScoringError(f"{model.source or model.model_name}: sample {sample_id} has no reference")


def _check_tools(tools: Sequence[Tool], computed: Sequence[Metric], options: ScoringOptions) -> None:
    """A metric that should be computed and cannot is an error before any expensive work, with the fix."""
    for tool in tools:
        reason = tool.unavailable(options)
        if reason:
            names = [m.key for m in computed if isinstance(tool, m.tool)]
            leave_out = ",".join(f"-{name}" for name in names)
            raise ScoringError(
                f"cannot compute {', '.join(LABELS[name] for name in names)}: {reason}. "
                f"To score without it, leave it out deliberately: --metrics all,{leave_out}"
            )


def check_options(options: ScoringOptions) -> tuple[Metric, ...]:
    """The metrics to compute; an error naming the fix when one of them cannot be computed. Cheap: run it first."""
    if options.bootstrap < MIN_BOOTSTRAP:
        raise ScoringError(f"--bootstrap must be at least {MIN_BOOTSTRAP} resamples (got {options.bootstrap})")
    computed = select_metrics(options.metrics)
    _check_tools(tools_for(computed), computed, options)
    return computed


def score_models(
    models: Sequence[ModelPredictions], options: ScoringOptions, log: Callable[[str], None] = print
) -> list[ModelResult]:
    computed = check_options(options)
    _check_inputs(models, options)
    tools = tools_for(computed)
    java = find_java()  # before any expensive work
    with tempfile.TemporaryDirectory(prefix="scoring_", dir=options.work_dir) as temp:
        context = ToolContext(java=java, work_dir=Path(temp), options=options, log=log)
        try:
            for tool in tools:
                tool.start(context)  # a JVM starts while we tokenize
            texts = _prepare_texts(models, any(tool.needs_tokens for tool in tools), context)
            outputs = _run_tools(tools, computed, texts, context)
            versions = {"java": java_version(java)}
            if any(tool.needs_tokens for tool in tools):
                versions["tokenizer"] = TOKENIZER
            for tool in tools:
                versions.update(tool.describe())
            return [
                _result(model, texts[index], [output[index] for output in outputs], computed, versions, options)
                for index, model in enumerate(models)
            ]
        finally:
            for tool in tools:
                tool.close()


def _prepare_texts(models: Sequence[ModelPredictions], tokenize: bool, context: ToolContext) -> list[ModelTexts]:
    predictions = [
        [
            "" if error is not None else clean_prediction(raw) if m.apply_cleanup else normalise_text(raw)
            for raw, error in zip(m.raw_predictions, m.errors, strict=True)
        ]
        for m in models
    ]
    references = [
        [[normalise_text(ref) for ref in refs if normalise_text(ref)] for refs in m.references] for m in models
    ]
    if not tokenize:
        return [
            ModelTexts(model.model_name, preds, refs, preds, refs)
            for model, preds, refs in zip(models, predictions, references, strict=True)
        ]
    # Each model's references and predictions are tokenized as the two documents COCOEvalCap.evaluate makes for it
    # (the tokenizer looks across line ends, so a text's tokens depend on its neighbours): never mixed across models.
    documents = []
    for model_predictions, model_refs in zip(predictions, references, strict=True):
        documents += [[text for refs in model_refs for text in refs], model_predictions]
    context.log(f"tokenizing {len({tuple(d) for d in documents})} distinct documents (PTB, one JVM)")
    tokenized = ptb_tokenize_documents(documents, context.java, context.work_dir)
    texts = []
    for index, model in enumerate(models):
        lines = iter(tokenized[2 * index])
        texts.append(
            ModelTexts(
                name=model.model_name,
                predictions=predictions[index],
                references=references[index],
                tokenized_predictions=tokenized[2 * index + 1],
                tokenized_references=[[next(lines) for _ in refs] for refs in references[index]],
            )
        )
    return texts


class _Background(threading.Thread):
    """A tool computing in a thread (a JVM answering) while the main thread runs the Python tools."""

    def __init__(self, tool: Tool, texts: list[ModelTexts], blocks: set[str], context: ToolContext) -> None:
        super().__init__(daemon=True)
        self.tool, self.texts, self.blocks, self.context = tool, texts, blocks, context
        self.outputs: list[ToolOutput] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outputs = self.tool.compute(self.texts, self.blocks, self.context)
        except BaseException as error:  # re-raised in the main thread
            self.error = error


def _run_tools(
    tools: Sequence[Tool], computed: Sequence[Metric], texts: list[ModelTexts], context: ToolContext
) -> list[list[ToolOutput]]:
    """Each tool's outputs (one per model), in `tools` order."""
    blocks = {id(tool): {m.statistics.key for m in computed if isinstance(tool, m.tool)} for tool in tools}
    background = {id(tool): _Background(tool, texts, blocks[id(tool)], context) for tool in tools if tool.background}
    for thread in background.values():
        thread.start()
    outputs: dict[int, list[ToolOutput]] = {}
    for tool in tools:
        if not tool.background:
            outputs[id(tool)] = tool.compute(texts, blocks[id(tool)], context)
    for tool in tools:
        if tool.background:
            thread = background[id(tool)]
            context.log(f"waiting for {tool.label or tool.name}")
            thread.join()
            if thread.error is not None:
                raise thread.error
            outputs[id(tool)] = thread.outputs
    for tool in tools:
        if len(outputs[id(tool)]) != len(texts):
            raise ScoringError(f"{tool.name} returned {len(outputs[id(tool)])} results for {len(texts)} models")
    return [outputs[id(tool)] for tool in tools]


def _result(
    model: ModelPredictions,
    texts: ModelTexts,
    outputs: list[ToolOutput],
    computed: tuple[Metric, ...],
    versions: dict[str, str],
    options: ScoringOptions,
) -> ModelResult:
    stats: dict[str, np.ndarray] = {}
    own_corpus: dict[str, float] = {}
    own_sentence: dict[str, list[float]] = {}
    warnings = list(model.warnings)
    signature: dict[str, str] = {}
    for output in outputs:
        stats.update(output.stats)
        own_corpus.update(output.corpus)
        own_sentence.update(output.sentence)
        warnings += output.warnings
        signature.update(output.signature)
    groups, unit = resampling_units(model.images if model.images is not None else [None] * len(model.sample_ids))
    matrix = SampleMatrix(stats=stats, groups=groups, unit=unit)
    metrics, sentence = _verified(model.model_name, matrix, computed, own_corpus, own_sentence)

    errors = sum(error is not None for error in model.errors)
    empty = sum(1 for text, error in zip(texts.predictions, model.errors, strict=True) if not text and not error)
    counts = SampleCounts(
        scored=len(model.sample_ids), empty=empty, failed=errors, missing=model.missing, unknown=model.unknown
    )
    if empty:
        warnings.append(f"{empty} predictions are empty after cleanup (scored as empty strings)")
    if errors:
        warnings.append(f"{errors} samples failed in the runner (scored as empty strings)")
    signature.update(versions)
    signature["bootstrap"] = describe_bootstrap(matrix, options.bootstrap, options.seed)
    signature["bootstrap_unit"] = matrix.unit
    signature["metrics"] = ",".join(m.key for m in computed)
    result = ModelResult(
        model=model,
        predictions=texts.predictions,
        references=texts.references,
        computed=computed,
        metrics=metrics,
        matrix=matrix,
        sentence=sentence,
        counts=counts,
        signature=signature,
        unavailable={key: LEFT_OUT for key in FILE_ORDER if metrics[key] is None},
        warnings=warnings,
    )
    add_uncertainty(result, options.bootstrap, options.seed)
    return result


def _verified(
    name: str,
    matrix: SampleMatrix,
    computed: Sequence[Metric],
    own_corpus: dict[str, float],
    own_sentence: dict[str, list[float]],
) -> tuple[dict[str, float | None], dict[str, list[float]]]:
    """Each metric's corpus value and per-sample scores. The registry's recomputation from the per-sample statistics
    must give the tool's own numbers (else intervals and per-query values would be wrong); the tool's are reported."""
    recomputed = corpus_metrics(computed, matrix, np.ones((1, matrix.num_samples)))
    metrics: dict[str, float | None] = dict.fromkeys(FILE_ORDER)
    sentence: dict[str, list[float]] = {}
    for m in computed:
        value = float(recomputed[m.key][0])
        own = own_corpus.get(m.key)
        if own is not None and not abs(value - own) <= RECOMPUTE_TOLERANCE:
            raise ScoringError(f"[{name}] {m.key}: recomputed {value!r} != tool's {own!r} (internal error)")
        metrics[m.key] = own if own is not None else value
        per_sample = sentence_scores(m, matrix.stats)
        if per_sample is None:
            continue
        if m.key in own_sentence:
            worst = float(np.max(np.abs(per_sample - np.asarray(own_sentence[m.key]))))
            if not worst <= RECOMPUTE_TOLERANCE:
                raise ScoringError(f"[{name}] {m.key}: per-sample scores differ from the tool's by {worst} (internal)")
            sentence[m.key] = [float(v) for v in own_sentence[m.key]]
        else:
            sentence[m.key] = per_sample.tolist()
    return metrics, sentence


def add_uncertainty(result: ModelResult, resamples: int, seed: int) -> None:
    """Bootstrap CIs (resampling images when an image carries several samples) and the per-query and per-group
    breakdowns, from the per-sample statistics only."""
    matrix = result.matrix
    values = corpus_metrics(result.computed, matrix, bootstrap_weights(matrix.groups, resamples, seed))
    intervals = confidence_intervals(values)
    result.ci = {key: intervals.get(key) for key in FILE_ORDER}
    result.per_query = breakdown(result.computed, matrix, result.model.queries)
    result.per_group = breakdown(result.computed, matrix, result.model.groups) if result.model.groups else {}


def breakdown(
    computed: Sequence[Metric], matrix: SampleMatrix, labels: Sequence[str | None]
) -> dict[str, dict[str, float | None]]:
    """Every metric over the samples of each label (a query, a group) from their summed statistics, with their
    count; a sample without a label (None) is in no row. Metrics left out are None."""
    rows: dict[str, dict[str, float | None]] = {}
    for label in sorted({label for label in labels if label is not None}):
        indicator = np.array([[1.0 if other == label else 0.0 for other in labels]])
        per_metric = corpus_metrics(computed, matrix, indicator)
        row: dict[str, float | None] = dict.fromkeys(FILE_ORDER)
        row.update({key: float(v[0]) for key, v in per_metric.items()})
        row["num_samples"] = float(indicator.sum())
        rows[label] = row
    return rows
