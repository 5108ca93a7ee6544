"""The metric registry: every metric the scoring step reports is ONE `Metric` record here, and everything else (the
engine, bootstrap intervals, per-query tables, paired tests, the console line, the report, the md/tex tables and
comparison.csv) iterates over `METRICS`.

Three kinds of record:
- a `Tool` computes per-sample sufficient statistics for every model of a run at once (sacreBLEU, pycocoevalcap's
  arithmetic in Python, the METEOR 1.5 jar, the SPICE 1.0 jar), and may report its own corpus and per-sample numbers,
  which the engine checks against the registry's recomputation;
- a `Statistics` block names a tool's per-sample statistics (a key of `SampleScores.stats`) and how rows are made
  summable;
- a `Metric` is one number of `<model>_metrics.json`: its key, label, display scale, direction, the statistics it is
  computed from and its corpus score from SUMMED statistics. Mean metrics (ROUGE-L, CIDEr-D, SPICE) store
  `[score, 1]` per sample, so a weighted sum is `[sum, count]` and every corpus score of any subset or resample
  is `metric.corpus(weights @ summable(stats))`.

Like sacreBLEU's segment statistics (`metrics/base.py`), nothing about a metric is decided anywhere else; adding one
(see docs/SCORING.md, "Adding a metric") means a record here and its test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contract import METRIC_KEYS
from scoring.java import ScoringError

if TYPE_CHECKING:
    from scoring.engine import ScoringOptions

# Why a metric the registry knows has no value: it was deliberately left out.
LEFT_OUT = "left out by --metrics"


# ---------------------------------------------------------------------------------------------------------------
# What tools get and give.


@dataclass
class ModelTexts:
    """One model's texts as every tool scores them, aligned by sample."""

    name: str
    predictions: list[str]  # cleaned; what sacreBLEU scores (it tokenizes itself)
    references: list[list[str]]  # separator-normalised, empty ones dropped
    tokenized_predictions: list[str]  # PTB, as COCOEvalCap tokenizes this model's predictions
    tokenized_references: list[list[str]]  # PTB, as COCOEvalCap tokenizes this model's references


@dataclass
class ToolOutput:
    """A tool's results for one model."""

    stats: dict[str, np.ndarray]  # Statistics.key -> (num_samples, width)
    corpus: dict[str, float] = field(default_factory=dict)  # metric key -> the tool's own corpus number
    sentence: dict[str, list[float]] = field(default_factory=dict)  # metric key -> the tool's own per-sample scores
    warnings: list[str] = field(default_factory=list)
    signature: dict[str, str] = field(default_factory=dict)


@dataclass
class ToolContext:
    java: str
    work_dir: Path
    options: ScoringOptions
    log: Callable[[str], None] = print


class Tool(ABC):
    """Computes statistics blocks for all models of a run in one go (one JVM for all, shared reference caches)."""

    name: str = ""
    label: str = ""  # what the console calls it
    background: bool = False  # runs in a thread while the other tools work (a JVM that answers slowly)
    needs_tokens: bool = True  # works on PTB-tokenized text

    def unavailable(self, options: ScoringOptions) -> str | None:
        """Why this tool cannot run (checked before any expensive work), with the fix; None when it can."""
        return None

    def start(self, context: ToolContext) -> None:  # noqa: B027  (most tools start nothing)
        """Called before tokenization: start what is slow to start."""

    @abstractmethod
    def compute(self, models: Sequence[ModelTexts], blocks: set[str], context: ToolContext) -> list[ToolOutput]:
        """The requested statistics blocks of every model, in model order."""

    def close(self) -> None:  # noqa: B027
        """Stop whatever `start` started; called once, also after an error."""

    def describe(self) -> dict[str, str]:
        """Signature entries: versions and settings."""
        return {}


def _identity(rows: np.ndarray) -> np.ndarray:
    return rows


@dataclass(frozen=True)
class Statistics:
    key: str  # key in SampleScores.stats
    tool: type[Tool]  # one instance per scoring run computes every block of this tool
    columns: tuple[str, ...]  # what each number is (docs); the stored width
    # Per-sample rows -> rows whose weighted sums are the tool's own corpus sums (METEOR: see summable_stats).
    summable: Callable[[np.ndarray], np.ndarray] = _identity


@dataclass(frozen=True)
class Metric:
    key: str  # the key in `metrics` of <model>_metrics.json (0-1 scale), also in ci, per_query, comparison.csv
    label: str  # what people read
    statistics: Statistics
    corpus: Callable[[np.ndarray], np.ndarray]  # summed statistics (rows, width) -> the metric per row, 0-1 scale
    # One sample's own score from its statistics ((rows, width) -> (rows,)), written per sample; None: no such score.
    sentence: Callable[[np.ndarray], np.ndarray] | None = None
    scale: float = 100.0  # shown x scale (console, report, md/tex): the captioning papers' convention
    higher_is_better: bool = True
    in_tables: bool = True  # a column of the console line, the report and the paper tables
    description: str = ""  # exactly what it is (docs/SCORING.md)

    @property
    def tool(self) -> type[Tool]:
        return self.statistics.tool


# ---------------------------------------------------------------------------------------------------------------
# Corpus scores from summed statistics.


def _mean_of_first(summed: np.ndarray) -> np.ndarray:
    """[sum of scores, number of samples] -> the mean (a mean metric's corpus score)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return summed[:, 0] / summed[:, 1]


def _first(rows: np.ndarray) -> np.ndarray:
    return rows[:, 0]


def _sacrebleu_corpus(summed: np.ndarray) -> np.ndarray:
    from scoring.ngram import sacrebleu_from_stats

    return np.array([sacrebleu_from_stats(row) for row in summed])


def _sacrebleu_sentence(rows: np.ndarray) -> np.ndarray:
    from scoring.ngram import sentence_bleu_from_stats

    return np.array([sentence_bleu_from_stats(row) for row in rows])


def _coco_bleu(order: int) -> Callable[[np.ndarray], np.ndarray]:
    def corpus(summed: np.ndarray) -> np.ndarray:
        from scoring.ngram import coco_bleu_from_stats

        return np.array([coco_bleu_from_stats(row)[order - 1] for row in summed])

    return corpus


def _meteor(rows: np.ndarray) -> np.ndarray:
    from scoring.meteor import meteor_from_stats

    return meteor_from_stats(rows)


def _meteor_summable(rows: np.ndarray) -> np.ndarray:
    from scoring.meteor import summable_stats

    return summable_stats(rows)


def _score_rows(values: Iterable[float]) -> np.ndarray:
    """A mean metric's per-sample statistics: [score, 1] per sample."""
    scores = np.asarray(list(values), dtype=np.float64)
    return np.column_stack([scores, np.ones_like(scores)]) if scores.size else np.zeros((0, 2))


# ---------------------------------------------------------------------------------------------------------------
# The tools.


class SacreBleuTool(Tool):
    name = "sacrebleu"
    needs_tokens = False

    def compute(self, models: Sequence[ModelTexts], blocks: set[str], context: ToolContext) -> list[ToolOutput]:
        from scoring.ngram import ReferenceSet

        cache: dict[tuple, ReferenceSet] = {}
        outputs = []
        for model in models:
            key = tuple(tuple(refs) for refs in model.references)
            reference_set = cache.setdefault(key, ReferenceSet(model.references, model.tokenized_references))
            result = reference_set.sacrebleu_scores(model.predictions)
            outputs.append(
                ToolOutput(
                    stats={"sacrebleu": result.stats},
                    corpus={"bleu4": result.corpus},
                    sentence={"bleu4": result.sentence},
                    signature={"sacrebleu": result.signature},
                )
            )
        return outputs

    def describe(self) -> dict[str, str]:
        import sacrebleu

        return {"sacrebleu_version": sacrebleu.__version__}


class CocoPythonTool(Tool):
    """pycocoevalcap's BLEU (its own BleuScorer), ROUGE-L and CIDEr-D (its arithmetic, scoring/ngram.py), with the
    reference-only work done once per distinct reference set."""

    name = "pycocoevalcap"

    def compute(self, models: Sequence[ModelTexts], blocks: set[str], context: ToolContext) -> list[ToolOutput]:
        from scoring.ngram import ReferenceSet

        cache: dict[tuple, ReferenceSet] = {}
        outputs = []
        for model in models:
            key = tuple(tuple(refs) for refs in model.references)
            if key not in cache:
                context.log(f"[{model.name}] preparing its reference set ({len(key)} samples)")
                cache[key] = ReferenceSet(model.references, model.tokenized_references)
            reference_set = cache[key]
            hypotheses = model.tokenized_predictions
            context.log(f"[{model.name}] {', '.join(sorted(blocks))} on {len(hypotheses)} samples")
            output = ToolOutput(stats={})
            if "coco_bleu" in blocks:
                coco = reference_set.coco_bleu(hypotheses)
                output.stats["coco_bleu"] = coco.stats
                output.corpus.update({f"coco_bleu{n + 1}": coco.corpus[n] for n in range(4)})
            if "rougeL" in blocks:
                corpus, scores = reference_set.rouge_l(hypotheses)
                output.stats["rougeL"] = _score_rows(scores)
                output.corpus["rougeL"], output.sentence["rougeL"] = corpus, scores.tolist()
            if "cider" in blocks:
                corpus, scores = reference_set.cider_d(hypotheses)
                output.stats["cider"] = _score_rows(scores)
                output.corpus["cider"], output.sentence["cider"] = corpus, scores.tolist()
            outputs.append(output)
        return outputs

    def describe(self) -> dict[str, str]:
        from importlib.metadata import version

        return {
            "pycocoevalcap_version": version("pycocoevalcap"),
            "cider": "pycocoevalcap CIDEr-D (n=4, sigma=6), df from the evaluated references",
            "rougeL": "pycocoevalcap ROUGE-L (beta 1.2)",
        }


class MeteorTool(Tool):
    """METEOR 1.5, one JVM for all models, started before tokenization and run in a thread."""

    name = "meteor"
    label = "METEOR"
    background = True

    def __init__(self) -> None:
        self._process = None

    def start(self, context: ToolContext) -> None:
        from scoring.meteor import MeteorProcess

        self._process = MeteorProcess(context.java, heap=context.options.meteor_heap)

    def compute(self, models: Sequence[ModelTexts], blocks: set[str], context: ToolContext) -> list[ToolOutput]:
        assert self._process is not None, "MeteorTool.start was not called"
        outputs = []
        for model in models:
            lines = self._process.segment_stats(model.tokenized_predictions, model.tokenized_references)
            segments, corpus = self._process.evaluate(lines)
            stats = np.array([[float(x) for x in line.split()] for line in lines], dtype=np.float64)
            outputs.append(
                ToolOutput(
                    stats={"meteor": stats.reshape(len(lines), -1)},
                    corpus={"meteor": corpus},
                    sentence={"meteor": list(segments)},
                )
            )
        return outputs

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    def describe(self) -> dict[str, str]:
        return {"meteor": "meteor-1.5.jar -stdio -l en -norm (alpha 0.85 beta 0.2 gamma 0.6 delta 0.75)"}


class SpiceTool(Tool):
    """SPICE 1.0 over every model's candidates in one run (scoring.spice)."""

    name = "spice"
    label = "SPICE"

    def unavailable(self, options: ScoringOptions) -> str | None:
        from scoring.java import ScoringError
        from scoring.spice import check_spice, configured_jar_dir

        try:
            check_spice(configured_jar_dir(options.spice_jars))
        except ScoringError as error:
            return str(error)
        return None

    def compute(self, models: Sequence[ModelTexts], blocks: set[str], context: ToolContext) -> list[ToolOutput]:
        from scoring.spice import SpiceItem, SpiceJvmError, configured_jar_dir, run_spice

        items = [
            SpiceItem(f"{m}/{s}", hypothesis, refs)
            for m, model in enumerate(models)
            for s, (hypothesis, refs) in enumerate(
                zip(model.tokenized_predictions, model.tokenized_references, strict=True)
            )
        ]
        options = context.options
        by_key = run_spice(
            items, context.java, configured_jar_dir(options.spice_jars), context.work_dir, options.spice_cache,
            workers=options.spice_workers, heap_mb=options.spice_heap_mb, timeout=options.spice_timeout,
            log=context.log,
        )  # fmt: skip
        outputs = []
        for m, model in enumerate(models):
            scores = np.array([by_key[f"{m}/{s}"] for s in range(len(model.predictions))], dtype=np.float64)
            missing = int(np.isnan(scores).sum())
            if missing:  # pycocoevalcap's mean would be NaN; SPICE 1.0 never gives NaN for "All"
                raise SpiceJvmError(f"[{model.name}] SPICE gave no F-score for {missing} samples")
            outputs.append(ToolOutput(stats={"spice": _score_rows(scores)}))
        return outputs

    def describe(self) -> dict[str, str]:
        return {"spice": "spice-1.0.jar with Stanford CoreNLP 3.6.0"}


# ---------------------------------------------------------------------------------------------------------------
# The registry.

SACREBLEU, COCO, METEOR, SPICE = SacreBleuTool, CocoPythonTool, MeteorTool, SpiceTool
TOOLS: tuple[type[Tool], ...] = (SACREBLEU, COCO, METEOR, SPICE)  # the order they run in (background ones first)

SACREBLEU_STATS = Statistics(
    "sacrebleu",
    SACREBLEU,
    ("sys_len", "ref_len", "correct_1", "correct_2", "correct_3", "correct_4", "total_1", "total_2", "total_3",
     "total_4"),
)  # fmt: skip
COCO_BLEU_STATS = Statistics(
    "coco_bleu",
    COCO,
    ("testlen", "closest_reflen", "guess_1", "guess_2", "guess_3", "guess_4", "correct_1", "correct_2", "correct_3",
     "correct_4"),
)  # fmt: skip
METEOR_STATS = Statistics(
    "meteor",
    METEOR,
    ("test_len", "ref_len", "test_function_words", "ref_function_words",
     *(f"{side}_{kind}_{module}" for module in ("exact", "stem", "synonym", "paraphrase")
       for kind, side in (("content", "test"), ("content", "ref"), ("function", "test"), ("function", "ref"))),
     "chunks", "test_word_matches", "ref_word_matches"),
    summable=_meteor_summable,
)  # fmt: skip
ROUGE_STATS = Statistics("rougeL", COCO, ("score", "count"))
CIDER_STATS = Statistics("cider", COCO, ("score", "count"))
SPICE_STATS = Statistics("spice", SPICE, ("f_score", "count"))

METRICS: tuple[Metric, ...] = (
    Metric(
        "bleu4",
        "sacreBLEU BLEU-4",
        SACREBLEU_STATS,
        _sacrebleu_corpus,
        sentence=_sacrebleu_sentence,
        description="sacreBLEU corpus BLEU (13a, exp smoothing, case kept), references as None-padded streams; "
        "per sample: sentence BLEU with effective order",
    ),
    *(
        Metric(
            f"coco_bleu{order}",
            f"BLEU-{order} (COCO)",
            COCO_BLEU_STATS,
            _coco_bleu(order),
            in_tables=order == 4,
            description=f"pycocoevalcap Bleu(4), BLEU-{order} with the closest reference length",
        )
        for order in (1, 2, 3, 4)
    ),
    Metric(
        "meteor",
        "METEOR",
        METEOR_STATS,
        _meteor,
        sentence=_meteor,
        description="METEOR 1.5 (the jar's EVAL: summed segment statistics, a perfect segment's chunks left out)",
    ),
    Metric(
        "rougeL",
        "ROUGE-L",
        ROUGE_STATS,
        _mean_of_first,
        sentence=_first,
        description="pycocoevalcap ROUGE-L (beta 1.2), mean over samples",
    ),
    Metric(
        "cider",
        "CIDEr",
        CIDER_STATS,
        _mean_of_first,
        sentence=_first,
        description="pycocoevalcap CIDEr-D, mean over samples",
    ),
    Metric(
        "spice",
        "SPICE",
        SPICE_STATS,
        _mean_of_first,
        sentence=_first,
        description="SPICE 1.0 F-score ('All' tuples), mean over samples",
    ),
)
BY_KEY: dict[str, Metric] = {metric.key: metric for metric in METRICS}
# The file's own order for comparison.csv: the contract's keys (users' scripts rely on them), then any newer ones.
FILE_ORDER: tuple[str, ...] = (*METRIC_KEYS, *(m.key for m in METRICS if m.key not in METRIC_KEYS))
TABLE_METRICS: tuple[Metric, ...] = tuple(metric for metric in METRICS if metric.in_tables)
LABELS: dict[str, str] = {metric.key: metric.label for metric in METRICS}


def metric(key: str) -> Metric:
    try:
        return BY_KEY[key]
    except KeyError:
        raise ScoringError(f"unknown metric {key!r}; known: {', '.join(BY_KEY)}") from None


def select_metrics(spec: str | Sequence[str] | None) -> tuple[Metric, ...]:
    """`--metrics`: comma list of metric keys and "all"; "-KEY" leaves a metric out ("all,-spice", or just "-spice").
    None or empty: all. Registry order, whatever the order given."""
    items = [item.strip() for item in (spec.split(",") if isinstance(spec, str) else spec or []) if item.strip()]
    included = [item for item in items if not item.startswith("-")]
    excluded = [item[1:] for item in items if item.startswith("-")]
    for key in [*included, *excluded]:
        if key != "all":
            metric(key)
    if "all" in excluded:
        raise ScoringError("--metrics: '-all' leaves nothing to score")
    keys = set(BY_KEY) if not included or "all" in included else set(included)
    keys -= set(excluded)
    if not keys:
        raise ScoringError(f"--metrics {','.join(items)!r} leaves nothing to score")
    return tuple(m for m in METRICS if m.key in keys)


def tools_for(metrics: Iterable[Metric]) -> list[Tool]:
    """A fresh instance of each tool these metrics need, in TOOLS order."""
    wanted = {m.tool for m in metrics}
    return [tool() for tool in TOOLS if tool in wanted]


def corpus_scores(
    metrics: Iterable[Metric], stats: dict[str, np.ndarray], weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each metric for each row of `weights` (rows, num_samples): how often each sample counts (all ones: the corpus,
    an indicator: a subset, multinomial counts: a bootstrap resample)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    summed: dict[str, np.ndarray] = {}
    values = {}
    for m in metrics:
        block = m.statistics
        if block.key not in summed:
            summed[block.key] = weights @ block.summable(stats[block.key])
        values[m.key] = m.corpus(summed[block.key])
    return values


def sentence_scores(m: Metric, stats: dict[str, np.ndarray]) -> np.ndarray | None:
    return None if m.sentence is None else m.sentence(stats[m.statistics.key])
