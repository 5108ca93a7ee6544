"""Scoring: exact multi-reference caption metrics (sacreBLEU, pycocoevalcap BLEU/METEOR 1.5/ROUGE-L/CIDEr-D,
SPICE), bootstrap confidence intervals, paired significance tests, summary and report.

Entry points: `python -m scoring ...` (scoring.cli) and `scoring.engine.score_models` for use from Python.
See docs/SCORING.md.
"""
