"""Benchmark: scoring 8 models in ONE process vs the naive loop (one fresh pycocoevalcap pass per model).

Workload: the QuIC-360 leave-one-out set (1,169 samples with >= 2 captions; first caption = candidate, the
rest = references) with 8 deterministic perturbations of the candidates = 8 models.
- one process: `scoring.engine.score_models` (one PTB tokenizer run over every distinct text, one METEOR JVM
  for all models running while Python computes BLEU/ROUGE-L/CIDEr, plus 1000-resample bootstrap CIs and the
  per-query breakdown, which the naive loop does not even compute).
- naive loop: per model, what a COCOEvalCap.evaluate() pass does minus SPICE (fresh PTBTokenizer on references
  and candidates, Bleu(4), a fresh Meteor() JVM, Rouge, Cider) plus sacrebleu.corpus_bleu.
SPICE is excluded from both (its CoreNLP jars are not on this machine). The numbers must be identical.

    .venv/bin/python bench/bench_scoring.py            # full run (about 10 minutes on 2 cores)
    .venv/bin/python bench/bench_scoring.py --models 2 # quicker look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

QUIC_TEST = REPO_ROOT.parent / "shared" / "data" / "quic360" / "test.tsv"
COMPARED = ("bleu4", "coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "meteor", "rougeL", "cider")


def _drop_first(words: list[str]) -> list[str]:
    return words[1:]


def _drop_last(words: list[str]) -> list[str]:
    return words[:-1]


def _swap_first_two(words: list[str]) -> list[str]:
    return words[1:2] + words[:1] + words[2:]


def _reverse(words: list[str]) -> list[str]:
    return words[::-1]


def _repeat_last(words: list[str]) -> list[str]:
    return words + words[-1:]


def _every_third_is_thing(words: list[str]) -> list[str]:
    return [("thing" if index % 3 == 2 else word) for index, word in enumerate(words)]


def _first_half(words: list[str]) -> list[str]:
    return words[: max(1, len(words) // 2)]


def _rotate_two(words: list[str]) -> list[str]:
    return words[2:] + words[:2]


PERTURBATIONS = {
    "drop-first": _drop_first,
    "drop-last": _drop_last,
    "swap-first-two": _swap_first_two,
    "reverse": _reverse,
    "repeat-last": _repeat_last,
    "every-third-thing": _every_third_is_thing,
    "first-half": _first_half,
    "rotate-two": _rotate_two,
}


def leave_one_out() -> list[tuple[str, str, str, list[str]]]:
    """(sample_id, query, first caption, other captions) for every sample with >= 2 captions."""
    from contract import load_dataset

    samples = [sample for sample in load_dataset(QUIC_TEST).samples if len(sample.references) >= 2]
    return [(sample.sample_id, sample.query, sample.references[0], sample.references[1:]) for sample in samples]


def naive_pass(candidates: list[str], references: list[list[str]]) -> dict[str, float]:
    """One fresh COCOEvalCap-style pass (without SPICE) plus sacrebleu, as a per-model script would do it."""
    import sacrebleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": candidate}] for i, candidate in enumerate(candidates)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    meteor_score, _ = meteor.compute_score(gts, res)
    del meteor  # its __del__ stops the JVM, as when a per-model script exits
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    sacre = sacrebleu.corpus_bleu(candidates, streams, tokenize="13a", smooth_method="exp")
    return {
        "bleu4": sacre.score / 100,
        **{f"coco_bleu{n + 1}": float(bleu[n]) for n in range(4)},
        "meteor": float(meteor_score),
        "rougeL": float(rouge),
        "cider": float(cider),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8, help="how many perturbed models (1-8)")
    args = parser.parse_args()
    if not QUIC_TEST.is_file():
        print(f"skipped: shared QuIC-360 test split absent: {QUIC_TEST}")
        return 0
    from scoring.engine import ModelPredictions, ScoringOptions, score_models

    items = leave_one_out()
    references = [item[3] for item in items]
    names = list(PERTURBATIONS)[: args.models]
    candidates = {name: [" ".join(PERTURBATIONS[name](item[2].split())) for item in items] for name in names}
    print(f"{len(items)} leave-one-out samples x {len(names)} models: {', '.join(names)}")

    models = [
        ModelPredictions(
            model_name=name,
            model_id=name,
            sample_ids=[item[0] for item in items],
            queries=[item[1] for item in items],
            raw_predictions=candidates[name],
            references=references,
            errors=[None] * len(items),
            apply_cleanup=False,  # same text for both sides
        )
        for name in names
    ]
    started = time.perf_counter()
    results = score_models(models, ScoringOptions(metrics="all,-spice"), log=lambda _: None)
    one_process_s = time.perf_counter() - started
    print(f"one process:  {one_process_s:7.1f} s  (with 1000-resample bootstrap CIs and the per-query breakdown)")

    naive: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for name in names:
        naive[name] = naive_pass(candidates[name], references)
    naive_s = time.perf_counter() - started
    print(f"naive loop:   {naive_s:7.1f} s  ({naive_s / len(names):.1f} s per model)")

    worst = 0.0
    for result in results:
        for metric in COMPARED:
            ours, theirs = result.metrics[metric], naive[result.model.model_name][metric]
            assert ours is not None
            worst = max(worst, abs(ours - theirs))
    identical = worst <= 1e-9
    print(f"numbers identical (max |difference| over {len(names)} models x {len(COMPARED)} metrics): {worst:.3g}")
    for result in results:
        print("  " + "  ".join(f"{m}={result.metrics[m]:.6f}" for m in ("bleu4", "meteor", "rougeL", "cider")), end="")
        print(f"  [{result.model.model_name}]")
    print(f"speed-up: {naive_s / one_process_s:.2f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
