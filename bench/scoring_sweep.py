"""Differential sweep: `python -m scoring score` against the reference tools on hundreds of generated corpora.

The corpora are tests/scoring_corpora.py's (seeds 0..N-1 by default): exact copies of references, case, punctuation
and stem variants, no shared word, one word, punctuation only, repeated words, hundreds of words, digits, hyphens and
apostrophes, non-ASCII letters, duplicate references, identical samples, varying reference counts, single samples.
All corpora are the models of ONE scoring run; the reference side runs pycocoevalcap's own `COCOEvalCap.evaluate`
for each corpus alone (one shared METEOR JVM), sacreBLEU, and with --spice pycocoevalcap's `Spice` once over all
corpora. Prints, per metric, the largest difference from the reference tools, corpus and per sample, and how many
corpus numbers fall outside their own bootstrap interval.

    python -m bench.scoring_sweep                    # 300 corpora, every metric but SPICE
    python -m bench.scoring_sweep --corpora 50 --spice   # SPICE too (needs its jars: SCORING_SPICE_JARS); every
                                                         # prediction cut to 50 words (SPICE's parser is cubic)
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from contract import MetricsFile, SampleScores, read_json, read_jsonl
from tests.scoring_corpora import make_corpus, shortened
from tests.scoring_reference import coco_eval, pycocoevalcap_spice, sacrebleu_bleu4, start_scoring

METRICS = ("bleu4", "coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "meteor", "rougeL", "cider")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--spice", action="store_true", help="also SPICE (needs the CoreNLP jars)")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.corpora))
    corpora = [make_corpus(seed) for seed in seeds]
    if args.spice:  # SPICE's parser takes minutes per caption of 100+ words: cut predictions to 50 words
        corpora = [shortened(corpus, 50) for corpus in corpora]
    samples = sum(len(corpus) for corpus in corpora)
    print(f"{len(corpora)} corpora (seeds {seeds[0]}..{seeds[-1]}), {samples} samples")

    from pycocoevalcap.meteor.meteor import Meteor

    with tempfile.TemporaryDirectory(prefix="scoring_sweep_") as temp:
        folder = Path(temp)
        started = time.perf_counter()
        metrics_option = "all" if args.spice else "all,-spice"
        run = start_scoring(corpora, folder / "project", "--metrics", metrics_option)
        out = run.wait()
        project_s = time.perf_counter() - started
        started = time.perf_counter()
        meteor = Meteor()
        reference = [coco_eval(corpus, meteor) for corpus in corpora]
        del meteor
        spice = None
        if args.spice:
            from scoring.spice import configured_jar_dir

            tokenized = [(coco.tokenized_predictions, coco.tokenized_references) for coco in reference]
            spice = pycocoevalcap_spice(corpora, tokenized, configured_jar_dir(None), folder / "reference")
        reference_s = time.perf_counter() - started

        worst_corpus = dict.fromkeys(METRICS + (("spice",) if spice else ()), 0.0)
        worst_sample = {key: 0.0 for key in ("meteor", "rougeL", "cider", *(("spice",) if spice else ()))}
        outside: list[str] = []
        for index, (seed, corpus, coco) in enumerate(zip(seeds, corpora, reference, strict=True)):
            metrics = read_json(out / f"{corpus.name}_metrics.json", MetricsFile)
            rows = list(read_jsonl(out / f"{corpus.name}_sample_scores.jsonl", SampleScores))
            expected = {**coco.metrics, "bleu4": sacrebleu_bleu4(corpus)}
            per_sample = dict(coco.per_sample)
            if spice is not None:
                values = [0.0 if math.isnan(v) else v for v in spice[index][1]]  # scoring counts "no F-score" as 0
                expected["spice"] = sum(values) / len(values)
                per_sample["spice"] = values
            for key, value in expected.items():
                worst_corpus[key] = max(worst_corpus[key], abs(metrics.metrics[key] - value))
            for key, values in per_sample.items():
                for row, value in zip(rows, values, strict=True):
                    worst_sample[key] = max(worst_sample[key], abs(row.scores[key] - value))
            for key, value in metrics.metrics.items():
                if value is not None and not metrics.ci[key][0] - 1e-9 <= value <= metrics.ci[key][1] + 1e-9:
                    outside.append(f"seed {seed} {key}")
    print(f"scoring (one run, all corpora): {project_s:.1f} s; reference tools: {reference_s:.1f} s")
    print("largest |scoring - reference|, corpus:    " + ", ".join(f"{k} {v:.1e}" for k, v in worst_corpus.items()))
    print("largest |scoring - reference|, per sample: " + ", ".join(f"{k} {v:.1e}" for k, v in worst_sample.items()))
    print(f"corpus numbers outside their own 95% bootstrap interval: {len(outside)} of "
          f"{len(corpora) * len(worst_corpus)}" + (f" ({', '.join(outside[:10])})" if outside else ""))  # fmt: skip
    failed = max(worst_corpus.values()) > 1e-6 or max(worst_sample.values()) > 1e-6 or outside
    print("RESULT: " + ("DIFFERENCES FOUND" if failed else "every number equal to the reference tools (1e-6)"))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
