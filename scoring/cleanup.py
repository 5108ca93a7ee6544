"""Text cleanup before scoring.

Predictions get the full cleanup (reasoning blocks, special tokens, one leading role tag, whitespace).
Predictions AND references get separator normalisation: a line or paragraph separator inside a caption breaks
METEOR's one-line-per-segment stdin protocol and silently shifts the PTB tokenizer's `-preserveLines` output
(measured: \\r, \\v, \\f, U+2028 and U+2029 each start a new output line, U+0085 turns into "...").
"""

from __future__ import annotations

import re

# Every character Python's str.splitlines() treats as a line boundary, plus the METEOR field separator's
# building block is handled separately (see strip_meteor_separator).
LINE_SEPARATORS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_SEPARATOR_RE = re.compile(f"[{re.escape(LINE_SEPARATORS)}]+")

_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
# A reasoning block left open (generation stopped inside it) or closed without its opener (the opener was part
# of the prompt): everything inside is reasoning, not caption.
_THINK_OPEN_RE = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"\A.*?</think>", re.DOTALL | re.IGNORECASE)

# Special tokens of the supported families that can survive decoding (skip_special_tokens misses tokens that
# are not registered as special, and some processors add them as plain text).
SPECIAL_TOKENS = (
    "<image>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<vision_start>",
    "<vision_end>",
    "<image_pad>",
    "<video_pad>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
)
# Chat-template tokens such as <|im_end|>, <|endoftext|>, <|vision_start|>, <|eot_id|>.
_PIPE_TOKEN_RE = re.compile(r"<\|[^<>|]*\|>")
_SPECIAL_TOKEN_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS), re.IGNORECASE)

# ONE leading role tag: "USER:", "ASSISTANT:", "Question:", "Answer:", "[/INST]", or a line holding only a role
# name (Gemma's "model" line, ChatML's "assistant" line left after its <|im_start|> token was removed).
_ROLE_TAG_RE = re.compile(
    r"\A\s*(?:(?:user|assistant|question|answer)\s*:|\[/INST\]|(?:model|assistant)[ \t]*(?:\r\n|[\n\r\u2028\u2029]))",
    re.IGNORECASE,
)


def normalise_separators(text: str) -> str:
    """Replace every line/paragraph separator by a space (predictions and references)."""
    return _SEPARATOR_RE.sub(" ", text)


def normalise_text(text: str) -> str:
    """Separators to spaces, whitespace runs collapsed, ends stripped: what references get."""
    return " ".join(normalise_separators(text).split())


def clean_prediction(raw: str) -> str:
    """The caption as scored: reasoning, special tokens and one leading role tag removed, whitespace collapsed."""
    text = _THINK_BLOCK_RE.sub(" ", raw)
    text = _THINK_OPEN_RE.sub(" ", text)
    text = _THINK_CLOSE_RE.sub(" ", text)
    text = _PIPE_TOKEN_RE.sub(" ", text)
    text = _SPECIAL_TOKEN_RE.sub(" ", text)
    # The role tag is matched before separators are normalised: Gemma's "model" tag is a line of its own.
    text = _ROLE_TAG_RE.sub(" ", text.lstrip(), count=1)
    return normalise_text(text)


def strip_meteor_separator(text: str) -> str:
    """METEOR's -stdio protocol splits fields on '|||'; remove it from any text sent to the jar.

    pycocoevalcap does this (then replaces double spaces) for the hypothesis only; references get it too here,
    which changes nothing unless a reference contains '|||'.
    """
    return text.replace("|||", "").replace("  ", " ")
