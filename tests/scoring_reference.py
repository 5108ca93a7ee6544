"""The reference tools run directly, for the scoring tests and benchmarks: pycocoevalcap's own `COCOEvalCap.evaluate`
(its PTB tokenization of references and predictions, Bleu(4), METEOR 1.5, ROUGE-L, CIDEr-D) and sacreBLEU.

`COCOEvalCap.evaluate` starts a METEOR JVM (15-40 s) and SPICE for every call; `coco_eval` hands it one shared
`Meteor` instance instead and leaves SPICE to `pycocoevalcap_spice`, which runs pycocoevalcap's own `Spice` once over
the items of many corpora (SPICE scores each item on its own, so batching changes no number).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from bench.spice_reference import reference_spice

COCO_METRICS = {  # pycocoevalcap's method names -> this project's metrics-file keys
    "Bleu_1": "coco_bleu1",
    "Bleu_2": "coco_bleu2",
    "Bleu_3": "coco_bleu3",
    "Bleu_4": "coco_bleu4",
    "METEOR": "meteor",
    "ROUGE_L": "rougeL",
    "CIDEr": "cider",
}


@dataclass
class Corpus:
    """One model's samples as the reference tools take them: prediction and references per sample, in order."""

    name: str
    predictions: list[str]
    references: list[list[str]]
    images: list[str] | None = None  # the image of each sample (several samples may share one)
    queries: list[str] | None = None

    def __len__(self) -> int:
        return len(self.predictions)


class _Annotations:
    """The two attributes of a pycocotools COCO object that COCOEvalCap reads."""

    def __init__(self, captions: Sequence[Sequence[str]]) -> None:
        self.imgToAnns = {index: [{"caption": text} for text in texts] for index, texts in enumerate(captions)}

    def getImgIds(self) -> list[int]:  # noqa: N802  (pycocotools' name)
        return list(self.imgToAnns)


class _NoSpice:
    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        return math.nan, [math.nan] * len(gts)

    def method(self) -> str:
        return "SPICE"


@dataclass
class CocoResult:
    metrics: dict[str, float]  # this project's keys
    per_sample: dict[str, list[float]]  # METEOR, ROUGE-L, CIDEr per sample (this project's keys)
    tokenized_predictions: list[str]
    tokenized_references: list[list[str]]


@contextmanager
def cocoevalcap_harness(meteor) -> Iterator[list[dict]]:  # noqa: ANN001  (pycocoevalcap.meteor.meteor.Meteor)
    """`pycocoevalcap.eval` as these tests run it: `meteor` as its METEOR scorer (one JVM for every evaluate()), SPICE
    left out (compared on its own), its prints silenced. Yields the list each PTBTokenizer.tokenize result is appended
    to: an evaluate() adds the references, then the predictions."""
    import pycocoevalcap.eval
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized: list[dict] = []
    real_tokenize = PTBTokenizer.tokenize

    def recording_tokenize(self, captions_for_image: dict) -> dict:  # noqa: ANN001
        tokenized.append(real_tokenize(self, captions_for_image))
        return tokenized[-1]

    with (
        mock.patch.object(pycocoevalcap.eval, "Meteor", lambda: meteor),
        mock.patch.object(pycocoevalcap.eval, "Spice", _NoSpice),
        mock.patch.object(PTBTokenizer, "tokenize", recording_tokenize),
        open(os.devnull, "w") as devnull,
        mock.patch.object(sys, "stdout", devnull),  # it prints every score
    ):
        yield tokenized


def coco_eval(corpus: Corpus, meteor) -> CocoResult:  # noqa: ANN001  (pycocoevalcap.meteor.meteor.Meteor)
    """`COCOEvalCap(coco, cocoRes).evaluate()` for one corpus, its own code path, with `meteor` as its METEOR scorer
    and SPICE left out (see `pycocoevalcap_spice`)."""
    import pycocoevalcap.eval

    evaluation = pycocoevalcap.eval.COCOEvalCap(
        _Annotations(corpus.references), _Annotations([[p] for p in corpus.predictions])
    )
    with cocoevalcap_harness(meteor) as tokenized:
        evaluation.evaluate()
    gts, res = tokenized
    order = range(len(corpus))
    return CocoResult(
        metrics={key: float(evaluation.eval[method]) for method, key in COCO_METRICS.items()},
        per_sample={
            key: [float(evaluation.imgToEval[i][method]) for i in order]
            for method, key in COCO_METRICS.items()
            if key in ("meteor", "rougeL", "cider")
        },
        tokenized_predictions=[res[i][0] for i in order],
        tokenized_references=[list(gts[i]) for i in order],
    )


def cocoevalcap_tokenized(corpus: Corpus) -> tuple[list[str], list[list[str]]]:
    """The corpus's predictions and references as COCOEvalCap.evaluate tokenizes them: pycocoevalcap's PTBTokenizer
    on all references (one call), then on all predictions (another)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(corpus.references)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(corpus.predictions)})
    return [res[i][0] for i in range(len(corpus))], [list(gts[i]) for i in range(len(corpus))]


def sacrebleu_bleu4(corpus: Corpus) -> float:
    """sacreBLEU corpus BLEU (13a, exp smoothing), references as None-padded streams, on a 0-1 scale."""
    import sacrebleu

    width = max(len(refs) for refs in corpus.references)
    streams = [[refs[i] if i < len(refs) else None for refs in corpus.references] for i in range(width)]
    return sacrebleu.corpus_bleu(corpus.predictions, streams, tokenize="13a", smooth_method="exp").score / 100


# -- this project's side ------------------------------------------------------------------------------------------


def write_corpus(corpus: Corpus, folder: Path) -> Path:
    """The corpus as `<name>_predictions.jsonl` (references in the records, so no data file is needed)."""
    from contract import PredictionRecord

    path = folder / f"{corpus.name}_predictions.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index, (prediction, refs) in enumerate(zip(corpus.predictions, corpus.references, strict=True)):
            record = PredictionRecord(
                sample_id=f"{corpus.name}-{index}",
                image=corpus.images[index] if corpus.images else f"{corpus.name}-{index}.jpg",
                query=corpus.queries[index] if corpus.queries else "q",
                prediction=prediction,
                references=refs,
            )
            handle.write(record.model_dump_json() + "\n")
    return path


@dataclass
class ScoringRun:
    """`python -m scoring score` over many corpora (each one a model), running in the background."""

    out: Path
    process: subprocess.Popen
    log: Path

    def wait(self, timeout: float = 3600) -> Path:
        self.process.wait(timeout=timeout)
        assert self.process.returncode == 0, self.log.read_text(encoding="utf-8")[-4000:]
        return self.out


def start_scoring(corpora: Sequence[Corpus], folder: Path, *options: str) -> ScoringRun:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(write_corpus(corpus, folder)) for corpus in corpora]
    out = folder / "results"
    command = [sys.executable, "-m", "scoring", "score", "--predictions", *paths, "--output-dir", str(out), *options]
    log = folder / "scoring.log"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=repo)
    return ScoringRun(out, process, log)


# -- SPICE --------------------------------------------------------------------------------------------------------


def pycocoevalcap_spice(
    corpora: Sequence[Corpus], tokenized: Sequence[tuple[list[str], list[list[str]]]], jar_dir: Path, folder: Path
) -> list[tuple[float, list[float]]]:
    """pycocoevalcap's `Spice().compute_score` on COCOEvalCap's tokenized texts (predictions, references) of every
    corpus in ONE run: per corpus, the mean it reports (np.mean of the F-scores, NaN when one is NaN) and the
    per-sample F-scores."""
    import numpy as np

    gts, res = {}, {}
    for index, (predictions, references) in enumerate(tokenized):
        for sample, (hypothesis, refs) in enumerate(zip(predictions, references, strict=True)):
            gts[f"{index}/{sample}"] = refs
            res[f"{index}/{sample}"] = [hypothesis]
    folder.mkdir(parents=True, exist_ok=True)
    with reference_spice(jar_dir, folder) as spice:
        _, scores = spice.compute_score(gts, res)  # type: ignore[attr-defined]
    by_key = {key: float(score["All"]["f"]) for key, score in zip(sorted(gts), scores, strict=True)}
    results = []
    for index, corpus in enumerate(corpora):
        values = [by_key[f"{index}/{sample}"] for sample in range(len(corpus))]
        results.append((float(np.mean(np.array(values))), values))
    return results
