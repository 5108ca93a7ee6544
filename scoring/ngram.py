"""The metrics computed in Python: sacreBLEU, pycocoevalcap BLEU-1..4, ROUGE-L and CIDEr-D.

Everything that depends on the references only (sacreBLEU's reference n-grams, pycocoevalcap's cooked BLEU
references, CIDEr-D's document frequencies and reference tf-idf vectors, ROUGE-L's reference token masks) is
computed ONCE per distinct reference set (`ReferenceSet`) and reused for every model scored against it.

Each function returns the tool's corpus number, per-sample scores, and the per-sample sufficient statistics
from which corpus numbers of any subset or resample are recomputed (see scoring.resample). sacreBLEU and
pycocoevalcap BLEU corpus numbers come from the tools' own code; ROUGE-L and CIDEr-D are computed here with
the same arithmetic as pycocoevalcap (an O(n) bit-parallel LCS instead of its O(n*m) table; cached reference
vectors instead of recomputing them per model) and are checked against pycocoevalcap to 1e-9 by the tests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer, cook_refs, cook_test
from pycocoevalcap.cider.cider_scorer import precook as cider_precook
from sacrebleu.metrics.bleu import BLEU

MAX_ORDER = 4
ROUGE_BETA = 1.2
CIDER_SIGMA = 6.0


@dataclass
class SacreBleuResult:
    corpus: float  # 0-1
    signature: str
    sentence: list[float]  # sentence BLEU (effective order, exp smoothing), 0-1
    stats: np.ndarray  # (n, 10): sys_len, ref_len, correct_1..4, total_1..4


@dataclass
class CocoBleuResult:
    corpus: list[float]  # BLEU-1..4
    stats: np.ndarray  # (n, 10): testlen, reflen (closest), guess_1..4, correct_1..4


def none_padded_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants reference STREAMS aligned with the hypotheses; shorter reference lists are None-padded."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


class ReferenceSet:
    """Per-reference-set caches, built once and shared by every model scored on these references.

    `references` are the separator-normalised texts (sacreBLEU tokenizes them itself); `tokenized` their PTB
    tokenization (pycocoevalcap BLEU, ROUGE-L, CIDEr-D).
    """

    def __init__(self, references: Sequence[Sequence[str]], tokenized: Sequence[Sequence[str]]) -> None:
        self.size = len(references)
        self.references = references
        self.tokenized = tokenized

    # Each cache is built on first use, so a metric left out (--metrics) costs nothing.

    @cached_property
    def sacrebleu(self) -> BLEU:
        """13a, exp smoothing, case kept; reference n-grams cached inside the metric object."""
        return BLEU(tokenize="13a", smooth_method="exp", references=none_padded_streams(self.references))

    @cached_property
    def coco_cooked(self) -> list:
        """pycocoevalcap BLEU: cooked references (length list + max n-gram counts)."""
        return [cook_refs(list(refs), n=MAX_ORDER) for refs in self.tokenized]

    @cached_property
    def rouge_refs(self) -> list[list[tuple[dict[str, int], int, int]]]:
        """ROUGE-L: tokens as pycocoevalcap splits them (on single spaces) and each token's position bitmask."""
        return [[_lcs_masks(ref.split(" ")) for ref in refs] for refs in self.tokenized]

    @cached_property
    def _cider_cooked(self) -> list[list[dict[tuple[str, ...], int]]]:
        return [[cider_precook(ref, MAX_ORDER) for ref in refs] for refs in self.tokenized]

    @cached_property
    def idf(self) -> dict[tuple[str, ...], float]:
        """CIDEr-D: idf = log(#samples) - log(max(1, df)) with df over these references, computed once per n-gram
        (np.log, as pycocoevalcap does)."""
        document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
        for refs in self._cider_cooked:
            for ngram in {ngram for ref in refs for ngram in ref}:
                document_frequency[ngram] += 1
        log_samples = np.log(float(len(self._cider_cooked)))
        return {ngram: float(log_samples - np.log(max(1.0, df))) for ngram, df in document_frequency.items()}

    @cached_property
    def unseen_idf(self) -> float:
        """The idf of an n-gram no reference has: log(#samples)."""
        return float(np.log(float(len(self._cider_cooked))) - np.log(1.0))

    @cached_property
    def cider_refs(self) -> list[list[tuple[list[dict], list[float], int]]]:
        """CIDEr-D: each reference's tf-idf vectors, norms and length."""
        return [[self._tfidf(ref) for ref in refs] for refs in self._cider_cooked]

    def _tfidf(self, counts: dict[tuple[str, ...], int]) -> tuple[list[dict], list[float], int]:
        """tf-idf vector per n-gram order, its norms, and pycocoevalcap's "length" (the bigram count).

        Plain IEEE double arithmetic in the same order as pycocoevalcap (x*x and sqrt are correctly rounded,
        like its pow(x, 2) and np.sqrt), so the values are the same bits.
        """
        vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(MAX_ORDER)]
        norms = [0.0] * MAX_ORDER
        length = 0
        idf, unseen = self.idf, self.unseen_idf
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            value = float(term_frequency) * idf.get(ngram, unseen)
            vectors[order][ngram] = value
            norms[order] += value * value
            if order == 1:
                length += term_frequency
        return vectors, [math.sqrt(norm) for norm in norms], length

    # -- metrics -----------------------------------------------------------------------------------------

    def sacrebleu_scores(self, hypotheses: Sequence[str]) -> SacreBleuResult:
        metric = self.sacrebleu
        corpus = metric.corpus_score(list(hypotheses), None)
        # The per-segment statistics sacrebleu sums for its corpus score (pinned sacrebleu==2.6.0).
        stats = np.array(metric._extract_corpus_statistics(list(hypotheses), None), dtype=np.float64)
        sentence = [sentence_bleu_from_stats(row) for row in stats]
        return SacreBleuResult(corpus.score / 100.0, metric.get_signature().format(), sentence, stats)

    def coco_bleu(self, hypotheses: Sequence[str]) -> CocoBleuResult:
        """pycocoevalcap Bleu(4) with its 'closest' reference length, on PTB-tokenized text."""
        scorer = BleuScorer(n=MAX_ORDER)
        scorer.crefs = list(self.coco_cooked)
        scorer.ctest = [
            cook_test(hyp, refs, n=MAX_ORDER) for hyp, refs in zip(hypotheses, self.coco_cooked, strict=True)
        ]
        corpus, _ = scorer.compute_score(option="closest", verbose=0)
        stats = np.zeros((len(hypotheses), 2 + 2 * MAX_ORDER))
        for index, comps in enumerate(scorer.ctest):
            test_length = comps["testlen"]
            closest = min((abs(length - test_length), length) for length in comps["reflen"])[1]
            stats[index] = [test_length, closest, *comps["guess"], *comps["correct"]]
        return CocoBleuResult([float(value) for value in corpus], stats)

    def rouge_l(self, hypotheses: Sequence[str]) -> tuple[float, np.ndarray]:
        """ROUGE-L as pycocoevalcap: LCS precision and recall, best of each over references, F with beta 1.2."""
        scores = np.zeros(len(hypotheses))
        for index, (hypothesis, refs) in enumerate(zip(hypotheses, self.rouge_refs, strict=True)):
            tokens = hypothesis.split(" ")
            precisions, recalls = [], []
            for masks, full, ref_length in refs:
                lcs = _lcs_length(masks, full, ref_length, tokens)
                precisions.append(lcs / float(len(tokens)))
                recalls.append(lcs / float(ref_length))
            best_precision, best_recall = max(precisions), max(recalls)
            if best_precision != 0 and best_recall != 0:
                beta2 = ROUGE_BETA**2
                scores[index] = ((1 + beta2) * best_precision * best_recall) / float(
                    best_recall + beta2 * best_precision
                )
        return float(np.mean(scores)), scores

    def cider_d(self, hypotheses: Sequence[str]) -> tuple[float, np.ndarray]:
        """CIDEr-D as pycocoevalcap: clipped tf-idf cosine per n-gram order, Gaussian length penalty (sigma 6),
        mean over orders, mean over references, x10; document frequencies from these references."""
        scores = []
        for hypothesis, refs in zip(hypotheses, self.cider_refs, strict=True):
            vector, norm, length = self._tfidf(cider_precook(hypothesis, MAX_ORDER))
            total = np.array([0.0] * MAX_ORDER)
            for ref_vector, ref_norm, ref_length in refs:
                total += _cider_similarity(vector, ref_vector, norm, ref_norm, length, ref_length)
            score = np.mean(total)
            score /= len(refs)
            score *= 10.0
            scores.append(score)
        return float(np.mean(np.array(scores))), np.array(scores, dtype=np.float64)


def _lcs_masks(tokens: list[str]) -> tuple[dict[str, int], int, int]:
    masks: dict[str, int] = {}
    for position, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks, (1 << len(tokens)) - 1, len(tokens)


def _lcs_length(masks: dict[str, int], full: int, length: int, other: list[str]) -> int:
    """Longest common subsequence length, bit-parallel (Hyyro 2004): one big-int step per token of `other`."""
    v = full
    for token in other:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


def _cider_similarity(
    vec_hyp: list[dict], vec_ref: list[dict], norm_hyp: list[float], norm_ref: list[float], len_hyp: int, len_ref: int
) -> np.ndarray:
    delta = float(len_hyp - len_ref)
    penalty = np.e ** (-(delta**2) / (2 * CIDER_SIGMA**2))
    values = []
    for order in range(MAX_ORDER):
        reference = vec_ref[order]
        value = 0.0
        for ngram, weight in vec_hyp[order].items():
            ref_weight = reference.get(ngram, 0.0)
            value += min(weight, ref_weight) * ref_weight
        if norm_hyp[order] != 0 and norm_ref[order] != 0:
            value /= norm_hyp[order] * norm_ref[order]
        values.append(value * penalty)
    return np.array(values)


def sacrebleu_from_stats(stats: np.ndarray) -> float:
    """Corpus sacreBLEU (0-1) from summed statistics (one row)."""
    sys_len, ref_len = int(stats[0]), int(stats[1])
    correct = [int(x) for x in stats[2 : 2 + MAX_ORDER]]
    total = [int(x) for x in stats[2 + MAX_ORDER :]]
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score / 100.0


def sentence_bleu_from_stats(stats: np.ndarray) -> float:
    """sacrebleu's sentence BLEU for one segment: exp smoothing with effective n-gram order."""
    sys_len, ref_len = int(stats[0]), int(stats[1])
    correct = [int(x) for x in stats[2 : 2 + MAX_ORDER]]
    total = [int(x) for x in stats[2 + MAX_ORDER :]]
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp", effective_order=True).score / 100


def coco_bleu_from_stats(stats: np.ndarray) -> list[float]:
    """BLEU-1..4 from summed statistics, the same arithmetic as pycocoevalcap's BleuScorer.compute_score."""
    small, tiny = 1e-9, 1e-15
    test_length, ref_length = float(stats[0]), float(stats[1])
    guess = [float(x) for x in stats[2 : 2 + MAX_ORDER]]
    correct = [float(x) for x in stats[2 + MAX_ORDER :]]
    scores = []
    product = 1.0
    for order in range(MAX_ORDER):
        product *= (correct[order] + tiny) / (guess[order] + small)
        scores.append(product ** (1.0 / (order + 1)))
    ratio = (test_length + tiny) / (ref_length + small)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return [float(score) for score in scores]
