"""Score one or many models in ONE process: one PTB tokenizer run over every distinct text, one METEOR JVM for
all models (running while Python computes the other metrics), one SPICE run over every candidate."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu

from contract import COCO_BLEU_METRICS, HEADLINE_METRICS, MetricsFile, SampleCounts, SampleScores, SubsetInfo
from scoring.cleanup import clean_prediction, normalise_text
from scoring.java import ScoringError, find_java, java_version
from scoring.meteor import MeteorProcess, meteor_from_stats
from scoring.ngram import ReferenceSet
from scoring.ptb import ptb_tokenize
from scoring.resample import SampleMatrix, bootstrap_weights, confidence_intervals, corpus_metrics
from scoring.spice import SpiceItem, configured_jar_dir, run_spice, unavailable_reason

ALL_METRICS = (*HEADLINE_METRICS, *COCO_BLEU_METRICS)
MIN_BOOTSTRAP = 1000
# Recomputing a corpus metric from the per-sample statistics must give the tool's own number.
RECOMPUTE_TOLERANCE = 1e-9


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
    missing: int = 0  # data samples without a prediction (scored only with --intersection)
    unknown: int = 0  # predictions whose sample_id is not in the data (dropped with --intersection)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None
    # Model output gets the full cleanup; a human caption (the leave-one-out baseline) only separator/whitespace
    # normalisation, like every reference.
    apply_cleanup: bool = True
    random_weights: bool = False  # a tiny random-weight checkpoint (from `<model>_run.json`)
    subset: SubsetInfo | None = None  # only the data file's first N samples were scored (--limit)
    # Each sample's group in the data file (NoCaps' domain, a JSONL "group"); None: the data set has no groups.
    groups: list[str | None] | None = None


@dataclass
class ScoringOptions:
    spice_jars: Path | None = None
    spice_cache: Path | None = None
    bootstrap: int = MIN_BOOTSTRAP
    seed: int = 0
    meteor_heap: str = "2G"
    work_dir: Path | None = None


@dataclass
class ModelResult:
    model: ModelPredictions
    predictions: list[str]  # cleaned, as scored
    references: list[list[str]]  # normalised
    metrics: dict[str, float | None]
    matrix: SampleMatrix
    sentence: dict[str, list[float | None]]  # per-sample scores
    meteor_stats: list[str]
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
        )

    def sample_scores(self) -> list[SampleScores]:
        rows = []
        for index, sample_id in enumerate(self.model.sample_ids):
            rows.append(
                SampleScores(
                    sample_id=sample_id,
                    query=self.model.queries[index],
                    prediction=self.predictions[index],
                    raw_prediction=self.model.raw_predictions[index],
                    error=self.model.errors[index],
                    references=self.references[index],
                    scores={metric: self.sentence[metric][index] for metric in HEADLINE_METRICS},
                    stats={
                        "sacrebleu": self.matrix.sacrebleu[index].tolist(),
                        "coco_bleu": self.matrix.coco_bleu[index].tolist(),
                        "meteor": self.matrix.meteor[index].tolist(),
                    },
                )
            )
        return rows


def tool_versions(java: str) -> dict[str, str]:
    from importlib.metadata import version

    return {
        "sacrebleu_version": sacrebleu.__version__,
        "pycocoevalcap_version": version("pycocoevalcap"),
        "java": java_version(java),
        "tokenizer": "PTBTokenizer (stanford-corenlp-3.4.1.jar) -preserveLines -lowerCase, punctuation removed",
        "meteor": "meteor-1.5.jar -stdio -l en -norm (alpha 0.85 beta 0.2 gamma 0.6 delta 0.75)",
        "cider": "pycocoevalcap CIDEr-D (n=4, sigma=6), df from the evaluated references",
        "rougeL": "pycocoevalcap ROUGE-L (beta 1.2)",
        "spice": "spice-1.0.jar with Stanford CoreNLP 3.6.0",
    }


def _check_inputs(models: Sequence[ModelPredictions], options: ScoringOptions) -> None:
    if options.bootstrap < MIN_BOOTSTRAP:
        raise ScoringError(f"--bootstrap must be at least {MIN_BOOTSTRAP} resamples (got {options.bootstrap})")
    names = [model.model_name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScoringError(f"model name(s) given more than once: {duplicates}")
    for model in models:
        if not model.sample_ids:
            raise ScoringError(f"{model.source or model.model_name}: no samples to score")
        for sample_id, refs in zip(model.sample_ids, model.references, strict=True):
            if not any(normalise_text(ref) for ref in refs):
                raise ScoringError(f"{model.source or model.model_name}: sample {sample_id} has no reference")


class _MeteorJob(threading.Thread):
    """All models' METEOR work on the one JVM, in a thread so Python metrics run meanwhile."""

    def __init__(self, meteor: MeteorProcess, jobs: list[tuple[list[str], list[list[str]]]]) -> None:
        super().__init__(daemon=True)
        self.meteor, self.jobs = meteor, jobs
        self.results: list[tuple[list[str], list[float], float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for hypotheses, references in self.jobs:
                stats = self.meteor.segment_stats(hypotheses, references)
                segment, corpus = self.meteor.evaluate(stats)
                self.results.append((stats, segment, corpus))
        except BaseException as error:  # re-raised in the main thread
            self.error = error


def score_models(
    models: Sequence[ModelPredictions], options: ScoringOptions, log: Callable[[str], None] = print
) -> list[ModelResult]:
    _check_inputs(models, options)
    java = find_java()  # before any expensive work
    jar_dir = configured_jar_dir(options.spice_jars)
    spice_reason = unavailable_reason(jar_dir)
    if spice_reason:
        log(f"SPICE unavailable, reported as null (see the warning at the end): {spice_reason}")

    with tempfile.TemporaryDirectory(prefix="scoring_", dir=options.work_dir) as temp:
        work_dir = Path(temp)
        meteor = MeteorProcess(java, heap=options.meteor_heap)  # its JVM starts while we tokenize
        try:
            return _score_with(models, options, java, jar_dir, spice_reason, meteor, work_dir, log)
        finally:
            meteor.close()


def _score_with(
    models: Sequence[ModelPredictions],
    options: ScoringOptions,
    java: str,
    jar_dir: Path,
    spice_reason: str | None,
    meteor: MeteorProcess,
    work_dir: Path,
    log: Callable[[str], None],
) -> list[ModelResult]:
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
    texts = [text for model_refs in references for refs in model_refs for text in refs]
    texts += [text for model_predictions in predictions for text in model_predictions]
    log(f"tokenizing {len(set(texts))} distinct texts (PTB, one JVM)")
    tokens = ptb_tokenize(texts, java, work_dir)
    tokenized_predictions = [[tokens[text] for text in model_predictions] for model_predictions in predictions]
    tokenized_references = [[[tokens[ref] for ref in refs] for refs in model_refs] for model_refs in references]

    meteor_job = _MeteorJob(meteor, list(zip(tokenized_predictions, tokenized_references, strict=True)))
    meteor_job.start()

    reference_sets: dict[tuple[tuple[str, ...], ...], ReferenceSet] = {}
    python_metrics = []
    for index, model in enumerate(models):
        key = tuple(tuple(refs) for refs in references[index])
        if key not in reference_sets:
            log(f"[{model.model_name}] preparing its reference set ({len(key)} samples)")
            reference_sets[key] = ReferenceSet(references[index], tokenized_references[index])
        reference_set = reference_sets[key]
        log(f"[{model.model_name}] BLEU, ROUGE-L, CIDEr-D on {len(model.sample_ids)} samples")
        hyps = tokenized_predictions[index]
        python_metrics.append(
            (
                reference_set.sacrebleu_scores(predictions[index]),
                reference_set.coco_bleu(hyps),
                reference_set.rouge_l(hyps),
                reference_set.cider_d(hyps),
            )
        )

    spice_scores: list[np.ndarray | None] = [None] * len(models)
    if spice_reason is None:
        log(f"SPICE over {sum(len(m.sample_ids) for m in models)} candidates (one JVM)")
        items = [
            SpiceItem(f"{m_index}/{s_index}", hyp, refs)
            for m_index in range(len(models))
            for s_index, (hyp, refs) in enumerate(
                zip(tokenized_predictions[m_index], tokenized_references[m_index], strict=True)
            )
        ]
        by_key = run_spice(items, java, jar_dir, work_dir, options.spice_cache)
        for m_index, model in enumerate(models):
            spice_scores[m_index] = np.array([by_key[f"{m_index}/{s}"] for s in range(len(model.sample_ids))])

    log("waiting for METEOR 1.5 (one JVM for all models)")
    meteor_job.join()
    if meteor_job.error is not None:
        raise meteor_job.error

    versions = tool_versions(java)
    results = []
    for index, model in enumerate(models):
        sacre, coco, (rouge_corpus, rouge_scores), (cider_corpus, cider_scores) = python_metrics[index]
        meteor_stats, meteor_segment, meteor_corpus = meteor_job.results[index]
        warnings = list(model.warnings)
        unavailable: dict[str, str] = {}
        spice = spice_scores[index]
        spice_corpus: float | None = None
        if spice is None:
            unavailable["spice"] = spice_reason or "SPICE was not run"
            warnings.append(f"spice is null: {unavailable['spice']}")
        else:
            nan = int(np.isnan(spice).sum())
            if nan:
                warnings.append(f"SPICE gave no F-score for {nan} samples; counted as 0.0 in the mean")
                spice = np.nan_to_num(spice, nan=0.0)
            spice_corpus = float(np.mean(spice))
        matrix = SampleMatrix(
            sacrebleu=sacre.stats,
            coco_bleu=coco.stats,
            meteor=np.array([[float(x) for x in line.split()] for line in meteor_stats]),
            rouge=rouge_scores,
            cider=cider_scores,
            spice=spice,
        )
        metrics: dict[str, float | None] = {
            "bleu4": sacre.corpus,
            "meteor": meteor_corpus,
            "rougeL": rouge_corpus,
            "cider": cider_corpus,
            "spice": spice_corpus,
        }
        for order in range(4):
            metrics[f"coco_bleu{order + 1}"] = coco.corpus[order]
        _verify_recomputation(model.model_name, matrix, metrics, meteor_segment)

        errors = sum(error is not None for error in model.errors)
        empty = sum(1 for text, error in zip(predictions[index], model.errors, strict=True) if not text and not error)
        counts = SampleCounts(
            scored=len(model.sample_ids), empty=empty, failed=errors, missing=model.missing, unknown=model.unknown
        )
        if empty:
            warnings.append(f"{empty} predictions are empty after cleanup (scored as empty strings)")
        if errors:
            warnings.append(f"{errors} samples failed in the runner (scored as empty strings)")
        signature = {
            "sacrebleu": sacre.signature,
            **versions,
            "bootstrap": f"{options.bootstrap} resamples of samples, seed {options.seed}, percentile 95% CI",
        }
        result = ModelResult(
            model=model,
            predictions=predictions[index],
            references=references[index],
            metrics=metrics,
            matrix=matrix,
            sentence={
                "bleu4": list(sacre.sentence),
                "meteor": list(meteor_segment),
                "rougeL": rouge_scores.tolist(),
                "cider": cider_scores.tolist(),
                "spice": spice.tolist() if spice is not None else [None] * len(model.sample_ids),
            },
            meteor_stats=meteor_stats,
            counts=counts,
            signature=signature,
            unavailable=unavailable,
            warnings=warnings,
        )
        add_uncertainty(result, options.bootstrap, options.seed)
        results.append(result)
    return results


def _verify_recomputation(
    name: str, matrix: SampleMatrix, metrics: dict[str, float | None], meteor_segment: Sequence[float]
) -> None:
    """The statistics kept per sample must reproduce the tools' corpus numbers (else CIs would be wrong)."""
    recomputed = corpus_metrics(matrix, np.ones((1, matrix.num_samples)))
    for metric, values in recomputed.items():
        expected = metrics[metric]
        if expected is not None and abs(float(values[0]) - expected) > RECOMPUTE_TOLERANCE:
            raise ScoringError(f"[{name}] {metric}: recomputed {values[0]!r} != tool's {expected!r} (internal error)")
    per_segment = meteor_from_stats(matrix.meteor)
    worst = float(np.max(np.abs(per_segment - np.asarray(meteor_segment)))) if len(meteor_segment) else 0.0
    if worst > RECOMPUTE_TOLERANCE:
        raise ScoringError(f"[{name}] METEOR segment scores differ from the jar's by {worst} (internal error)")


def add_uncertainty(result: ModelResult, resamples: int, seed: int) -> None:
    """Bootstrap CIs and the per-query and per-group breakdowns, from the per-sample statistics only."""
    n = result.matrix.num_samples
    values = corpus_metrics(result.matrix, bootstrap_weights(n, resamples, seed))
    intervals = confidence_intervals(values)
    result.ci = {metric: intervals.get(metric) for metric in ALL_METRICS}
    result.per_query = breakdown(result.matrix, result.model.queries)
    result.per_group = breakdown(result.matrix, result.model.groups) if result.model.groups else {}


def breakdown(matrix: SampleMatrix, labels: Sequence[str | None]) -> dict[str, dict[str, float | None]]:
    """Every metric over the samples of each label (a query, a group), with their count; a sample without a label
    (None) is in no row."""
    rows: dict[str, dict[str, float | None]] = {}
    for label in sorted({label for label in labels if label is not None}):
        indicator = np.array([[1.0 if other == label else 0.0 for other in labels]])
        per_metric = corpus_metrics(matrix, indicator)
        row: dict[str, float | None] = {metric: None for metric in ALL_METRICS}
        row.update({metric: float(v[0]) for metric, v in per_metric.items()})
        row["num_samples"] = float(indicator.sum())
        rows[label] = row
    return rows
