"""The metric registry, the Python-side metrics and resampling, against pycocoevalcap/sacrebleu (no Java needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge, my_lcs

from contract import METRIC_KEYS
from scoring.java import ScoringError
from scoring.meteor import meteor_from_stats, summable_stats
from scoring.metrics import BY_KEY, FILE_ORDER, LEFT_OUT, METRICS, TABLE_METRICS, corpus_scores, select_metrics
from scoring.ngram import ReferenceSet, _lcs_length, _lcs_masks, coco_bleu_from_stats, sacrebleu_from_stats
from scoring.resample import (
    IMAGE_UNIT,
    SAMPLE_UNIT,
    SampleMatrix,
    bootstrap_weights,
    confidence_intervals,
    corpus_metrics,
    paired_p_value,
    resampling_units,
)

# Already PTB-style (lower case, single spaces): pycocoevalcap's scorers take tokenized text.
REFERENCES = [
    ["a man rides a horse on the beach", "a person riding a horse", "horse and rider near the sea"],
    ["the sky is blue", "a clear blue sky with no clouds"],
    ["two dogs play in the snow", "dogs running in snow", "snow covered park with two dogs", "dogs"],
    ["a red car parked on the street"],
    ["people walk in a busy market", "a crowded market street"],
]
HYPOTHESES = [
    "a man riding a horse on a beach",
    "",  # empty prediction
    "dogs dogs dogs in the snow snow",  # repeated tokens (clipping)
    "a red car parked on the street",  # identical to its only reference
    "market",  # one word
]
PYTHON_METRICS = [m for m in METRICS if m.key not in ("meteor", "spice")]  # computed here without Java


# -- the registry ------------------------------------------------------------------------------------------------


def test_the_registry_defines_every_key_the_files_promise_once() -> None:
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    assert set(METRIC_KEYS) <= set(keys)  # users' scripts read these keys
    assert FILE_ORDER[: len(METRIC_KEYS)] == METRIC_KEYS  # comparison.csv keeps its column order
    assert [m.key for m in TABLE_METRICS] == ["bleu4", "coco_bleu4", "meteor", "rougeL", "cider", "spice"]
    for m in METRICS:
        assert m.label and m.scale > 0 and m.statistics.columns and m.description
        assert BY_KEY[m.key] is m


def test_select_metrics_lists_exclusions_and_errors() -> None:
    assert select_metrics(None) == METRICS == select_metrics("all")
    assert [m.key for m in select_metrics("all,-spice")] == [m.key for m in METRICS if m.key != "spice"]
    assert [m.key for m in select_metrics("-spice,-meteor")] == [m.key for m in METRICS if m.key not in
                                                                 ("spice", "meteor")]  # fmt: skip
    assert [m.key for m in select_metrics("cider,bleu4")] == ["bleu4", "cider"]  # registry order
    with pytest.raises(ScoringError, match="unknown metric 'ciderD'; known: bleu4, coco_bleu1"):
        select_metrics("ciderD")
    with pytest.raises(ScoringError, match="leaves nothing to score"):
        select_metrics("cider,-cider")
    assert LEFT_OUT == "left out by --metrics"


# -- the Python metrics against pycocoevalcap and sacrebleu ---------------------------------------------------------


def test_lcs_matches_pycocoevalcap_on_random_token_lists() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        a = [rng.choice("abcdef") for _ in range(rng.randint(1, 18))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(1, 18))]
        masks, full, length = _lcs_masks(a)
        assert _lcs_length(masks, full, length, b) == my_lcs(a, b)


def test_reference_set_metrics_equal_pycocoevalcap_and_sacrebleu() -> None:
    reference_set = ReferenceSet(REFERENCES, REFERENCES)
    gts = {i: refs for i, refs in enumerate(REFERENCES)}
    res = {i: [hyp] for i, hyp in enumerate(HYPOTHESES)}

    rouge, rouge_segments = reference_set.rouge_l(HYPOTHESES)
    expected_rouge, expected_rouge_segments = Rouge().compute_score(gts, res)
    assert rouge == expected_rouge
    np.testing.assert_array_equal(rouge_segments, expected_rouge_segments)

    cider, cider_segments = reference_set.cider_d(HYPOTHESES)
    expected_cider, expected_cider_segments = Cider().compute_score(gts, res)
    assert cider == pytest.approx(expected_cider, abs=1e-12)
    np.testing.assert_allclose(cider_segments, expected_cider_segments, rtol=0, atol=1e-12)

    coco = reference_set.coco_bleu(HYPOTHESES)
    expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert coco.corpus == pytest.approx(expected_bleu, abs=1e-12)
    assert coco_bleu_from_stats(coco.stats.sum(axis=0)) == pytest.approx(expected_bleu, abs=1e-12)

    sacre = reference_set.sacrebleu_scores(HYPOTHESES)
    width = max(len(refs) for refs in REFERENCES)
    streams = [[refs[i] if i < len(refs) else None for refs in REFERENCES] for i in range(width)]
    expected = sacrebleu.corpus_bleu(HYPOTHESES, streams, tokenize="13a", smooth_method="exp")
    assert sacre.corpus == expected.score / 100
    assert sacrebleu_from_stats(sacre.stats.sum(axis=0)) == expected.score / 100
    assert sacre.signature.startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0")
    for hypothesis, refs, sentence in zip(HYPOTHESES, REFERENCES, sacre.sentence, strict=True):
        assert sentence == pytest.approx(sacrebleu.sentence_bleu(hypothesis, refs).score / 100, abs=1e-12)


WORDS = st.sampled_from(["a", "dog", "dogs", "runs", "on", "the", "grass", "red", "car", "b.", "3", "x-ray", "don't"])
CAPTION = st.lists(WORDS, min_size=0, max_size=12).map(" ".join)
SAMPLE = st.tuples(CAPTION, st.lists(CAPTION.filter(bool), min_size=1, max_size=4))


@settings(max_examples=60, deadline=None, database=None)
@given(samples=st.lists(SAMPLE, min_size=1, max_size=8), data=st.data())
def test_registry_recomputation_equals_the_tools_on_any_subset(samples: list, data: st.DataObject) -> None:
    """For tokenized corpora Hypothesis draws (empty, repeated and identical captions included): the statistics kept
    per sample reproduce pycocoevalcap's BLEU-1..4 and ROUGE-L and sacreBLEU's BLEU-4 for ANY subset of the samples,
    through the registry's corpus functions (CIDEr-D is checked on the full set: its idf depends on the set)."""
    from scoring.metrics import CocoPythonTool, ModelTexts, SacreBleuTool, ToolContext

    hypotheses = [hyp for hyp, _ in samples]
    references = [refs for _, refs in samples]
    texts = ModelTexts("m", hypotheses, references, hypotheses, references)
    context = ToolContext(java="", work_dir=None, options=None, log=lambda line: None)  # type: ignore[arg-type]
    coco = CocoPythonTool().compute([texts], {"coco_bleu", "rougeL", "cider"}, context)[0]
    sacre = SacreBleuTool().compute([texts], {"sacrebleu"}, context)[0]
    stats = {**coco.stats, **sacre.stats}
    full = corpus_scores(PYTHON_METRICS, stats, np.ones((1, len(samples))))
    for key, value in {**coco.corpus, **sacre.corpus}.items():
        assert full[key][0] == pytest.approx(value, abs=1e-12, rel=0), key
    gts_all = {i: refs for i, refs in enumerate(references)}
    res_all = {i: [hyp] for i, hyp in enumerate(hypotheses)}
    assert full["cider"][0] == pytest.approx(Cider().compute_score(gts_all, res_all)[0], abs=1e-12, rel=0)

    chosen = data.draw(st.lists(st.sampled_from(range(len(samples))), min_size=1, max_size=len(samples), unique=True))
    indicator = np.zeros((1, len(samples)))
    indicator[0, chosen] = 1
    subset = corpus_scores(PYTHON_METRICS, stats, indicator)
    gts = {i: references[i] for i in chosen}
    res = {i: [hypotheses[i]] for i in chosen}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for order in range(4):
        assert subset[f"coco_bleu{order + 1}"][0] == pytest.approx(bleu[order], abs=1e-12, rel=0)
    assert subset["rougeL"][0] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12, rel=0)
    width = max(len(references[i]) for i in chosen)
    streams = [[references[i][k] if k < len(references[i]) else None for i in chosen] for k in range(width)]
    expected = sacrebleu.corpus_bleu([hypotheses[i] for i in chosen], streams, tokenize="13a", smooth_method="exp")
    assert subset["bleu4"][0] == pytest.approx(expected.score / 100, abs=1e-12, rel=0)


def test_meteor_formula_edge_cases() -> None:
    # Perfect single-chunk match: no fragmentation penalty, score = 1.
    perfect = np.zeros(23)
    perfect[[0, 1]] = 4  # lengths
    perfect[[4, 5]] = 4  # exact-stage content matches (test, reference)
    perfect[20:23] = [1, 4, 4]  # one chunk, 4 word matches each side
    assert meteor_from_stats(perfect) == pytest.approx(1.0 - 0.6 * (0.0**0.2))
    # Its chunk is not summed into a corpus (METEOR 1.5's addStats); its own score stays the same.
    assert summable_stats(perfect)[20] == 0.0 and meteor_from_stats(summable_stats(perfect)) == meteor_from_stats(
        perfect
    )
    # Empty hypothesis: 0/0 everywhere, which METEOR turns into 0, not NaN.
    empty = np.zeros(23)
    empty[1] = 5
    assert meteor_from_stats(empty) == 0.0 and summable_stats(empty)[20] == 0.0


# -- resampling --------------------------------------------------------------------------------------------------


def small_matrix(seed: int, n: int = 40, groups: np.ndarray | None = None) -> SampleMatrix:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, size=n).astype(float)
    totals = np.stack([np.maximum(lengths - k, 0) for k in range(4)], axis=1)
    correct = np.floor(totals * rng.uniform(0.1, 0.9, size=(n, 1)))
    meteor = np.zeros((n, 23))
    meteor[:, 0] = lengths
    meteor[:, 1] = lengths + 1
    meteor[:, 4] = correct[:, 0]
    meteor[:, 5] = correct[:, 0]
    meteor[:, 20] = np.maximum(1, correct[:, 0] // 2)
    meteor[:, 21] = correct[:, 0]
    meteor[:, 22] = correct[:, 0]
    ones = np.ones(n)
    stats = {
        "sacrebleu": np.column_stack([lengths, lengths + 1, correct, totals]),
        "coco_bleu": np.column_stack([lengths, lengths + 1, totals, correct]),
        "meteor": meteor,
        "rougeL": np.column_stack([rng.uniform(0, 1, n), ones]),
        "cider": np.column_stack([rng.uniform(0, 2, n), ones]),
    }
    groups = np.arange(n) if groups is None else groups
    return SampleMatrix(stats, groups, SAMPLE_UNIT if len(set(groups.tolist())) == n else IMAGE_UNIT)


NO_SPICE = [m for m in METRICS if m.key != "spice"]


def test_bootstrap_weights_are_seeded_resamples_of_n() -> None:
    weights = bootstrap_weights(np.arange(50), 1000, seed=3)
    assert weights.shape == (1000, 50)
    assert (weights.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(weights, bootstrap_weights(np.arange(50), 1000, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(np.arange(50), 1000, seed=4))


def test_resampling_images_draws_each_image_with_all_its_samples() -> None:
    images = ["p1", "p1", "p2", "p3", "p3", "p3", "p2"]
    groups, unit = resampling_units(images)
    assert unit == IMAGE_UNIT and groups.tolist() == [0, 0, 1, 2, 2, 2, 1]
    weights = bootstrap_weights(groups, 500, seed=0)
    for row in weights:  # samples of one image always come together, as often as their image was drawn
        assert row[0] == row[1] and row[2] == row[6] and row[3] == row[4] == row[5]
        assert row[0] + row[2] + row[3] == 3  # three draws: one per image
    assert resampling_units(["a", "b", "c"])[1] == SAMPLE_UNIT
    assert resampling_units([None, None])[1] == SAMPLE_UNIT  # images unknown: each sample on its own
    # One sample per image: exactly the classic bootstrap of samples (same draws as before images were known).
    np.testing.assert_array_equal(bootstrap_weights(resampling_units(list("abcdef"))[0], 200, 5),
                                  bootstrap_weights(np.arange(6), 200, 5))  # fmt: skip


def test_intervals_widen_when_an_images_samples_score_alike() -> None:
    """30 images x 4 samples, all samples of an image with the same score: there are 30 independent observations,
    not 120, so resampling images gives intervals about sqrt(4) = 2x wider than resampling samples."""
    rng = np.random.default_rng(0)
    per_image = rng.uniform(0, 1, size=30)
    images = [f"pano{i}" for i in range(30) for _ in range(4)]
    scores = np.repeat(per_image, 4)
    stats = {"rougeL": np.column_stack([scores, np.ones_like(scores)])}
    rouge = [BY_KEY["rougeL"]]
    groups, unit = resampling_units(images)
    assert unit == IMAGE_UNIT
    by_image = corpus_metrics(rouge, SampleMatrix(stats, groups, unit), bootstrap_weights(groups, 4000, 1))
    samples = np.arange(len(images))
    by_sample = corpus_metrics(rouge, SampleMatrix(stats, samples, SAMPLE_UNIT), bootstrap_weights(samples, 4000, 1))
    width = {name: np.subtract(*confidence_intervals(v)["rougeL"][::-1]) for name, v in
             (("image", by_image), ("sample", by_sample))}  # fmt: skip
    assert 1.7 < width["image"] / width["sample"] < 2.3
    # With one distinct score per sample instead, the two units agree.
    scores = rng.uniform(0, 1, size=120)
    stats = {"rougeL": np.column_stack([scores, np.ones_like(scores)])}
    independent = {name: np.subtract(*confidence_intervals(corpus_metrics(rouge, SampleMatrix(stats, g, u),
                   bootstrap_weights(g, 4000, 1)))["rougeL"][::-1]) for name, g, u in
                   (("image", groups, unit), ("sample", samples, SAMPLE_UNIT))}  # fmt: skip
    assert 0.8 < independent["image"] / independent["sample"] < 1.25


def test_corpus_metrics_of_a_subset_equal_the_metrics_of_that_subset_alone() -> None:
    matrix = small_matrix(0)
    subset = np.arange(matrix.num_samples) % 3 == 0
    via_weights = corpus_metrics(NO_SPICE, matrix, subset[None, :].astype(float))
    alone = SampleMatrix({k: v[subset] for k, v in matrix.stats.items()}, np.arange(int(subset.sum())), SAMPLE_UNIT)
    direct = corpus_metrics(NO_SPICE, alone, np.ones((1, int(subset.sum()))))
    for metric in direct:
        assert via_weights[metric][0] == pytest.approx(direct[metric][0], abs=1e-12), metric
    assert "spice" not in direct


def test_paired_p_value_separates_equal_and_different_models() -> None:
    matrix = small_matrix(1)
    weights = bootstrap_weights(matrix.groups, 1000, seed=0)
    rouge = [BY_KEY["rougeL"]]
    same = corpus_metrics(rouge, matrix, weights)["rougeL"]
    observed = corpus_metrics(rouge, matrix, np.ones((1, matrix.num_samples)))["rougeL"][0]
    assert paired_p_value(observed, observed, same, same) == 1.0
    better_stats = dict(matrix.stats)
    better_stats["rougeL"] = matrix.stats["rougeL"] + np.array([0.2, 0.0])
    shifted = corpus_metrics(rouge, SampleMatrix(better_stats, matrix.groups, matrix.unit), weights)["rougeL"]
    p = paired_p_value(observed + 0.2, observed, shifted, same)
    assert p == pytest.approx(1 / 1001)


def test_the_worked_example_in_the_docs_adds_a_working_metric() -> None:
    """docs/SCORING.md's "Adding a metric" example (chrF), run as written: its tool, statistics and record give
    sacreBLEU's own chrF, on the corpus and on a subset, through the registry's corpus function."""
    import re
    from pathlib import Path

    import scoring.metrics as registry

    docs = Path(__file__).resolve().parent.parent / "docs" / "SCORING.md"
    section = docs.read_text(encoding="utf-8").split("### Adding a metric", 1)[1].split("\n## ", 1)[0]
    definitions, record = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    namespace = dict(vars(registry))
    exec(definitions, namespace)  # noqa: S102  (the page's own code, as a user would paste it)
    chrf = eval(record.strip(), namespace)  # noqa: S307
    assert isinstance(chrf, registry.Metric) and chrf.key == "chrf" and namespace["ChrfTool"] in namespace["TOOLS"]

    hypotheses = ["A man riding a horse on a beach.", "", "Dogs, dogs and more dogs!", "A red car.", "Market"]
    references = [["A man rides a horse on the beach.", "A person riding a horse."], ["The sky is blue."],
                  ["Two dogs play in the snow.", "Dogs running in snow.", "Dogs."], ["A red car parked."],
                  ["People walk in a busy market.", "A crowded market street."]]  # fmt: skip
    texts = registry.ModelTexts("m", hypotheses, references, hypotheses, references)
    context = registry.ToolContext(java="", work_dir=None, options=None, log=lambda line: None)  # type: ignore[arg-type]
    output = chrf.tool().compute([texts], {"chrf"}, context)[0]

    def direct(indices: list[int]) -> float:
        width = max(len(references[i]) for i in indices)
        streams = [[references[i][k] if k < len(references[i]) else None for i in indices] for k in range(width)]
        return sacrebleu.corpus_chrf([hypotheses[i] for i in indices], streams).score / 100

    assert output.corpus["chrf"] == pytest.approx(direct([0, 1, 2, 3, 4]), abs=1e-12, rel=0)
    full = corpus_scores([chrf], output.stats, np.ones((1, 5)))["chrf"][0]
    assert full == pytest.approx(direct([0, 1, 2, 3, 4]), abs=1e-12, rel=0)
    subset = corpus_scores([chrf], output.stats, np.array([[1.0, 0.0, 1.0, 1.0, 0.0]]))["chrf"][0]
    assert subset == pytest.approx(direct([0, 2, 3]), abs=1e-12, rel=0)
