"""Prediction cleanup and separator normalisation (pure Python, no Java)."""

from __future__ import annotations

import pytest

from scoring.cleanup import (
    LINE_SEPARATORS,
    SPECIAL_TOKENS,
    clean_prediction,
    normalise_text,
    strip_meteor_separator,
)


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_each_special_token_is_removed(token: str) -> None:
    assert clean_prediction(f"{token}A red car{token} on the road.{token}") == "A red car on the road."


@pytest.mark.parametrize(
    "token", ["<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|eot_id|>"]
)
def test_chat_template_pipe_tokens_are_removed(token: str) -> None:
    assert clean_prediction(f"A beach at dusk.{token}{token}") == "A beach at dusk."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<think>the user wants a caption\nof the sky</think>A cloudy sky.", "A cloudy sky."),
        ("A dog. <THINK>hmm</THINK> Running.", "A dog. Running."),
        ("reasoning left over from the prompt</think> A quiet street.", "A quiet street."),
        ("A harbour with boats. <think>I should also mention", "A harbour with boats."),
    ],
)
def test_reasoning_blocks_are_removed(raw: str, expected: str) -> None:
    assert clean_prediction(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("USER: a kitchen", "a kitchen"),
        ("ASSISTANT: A kitchen with a table.", "A kitchen with a table."),
        ("assistant:A kitchen.", "A kitchen."),
        ("Question: what is here? ", "what is here?"),
        ("Answer: Two people near a fountain.", "Two people near a fountain."),
        ("model\nA snowy mountain.", "A snowy mountain."),
        ("assistant\r\nA snowy mountain.", "A snowy mountain."),
        ("[/INST] A snowy mountain.", "A snowy mountain."),
        # Only ONE leading tag goes; a second one is part of the text.
        ("ASSISTANT: Answer: yes", "Answer: yes"),
        # Not a role tag: the word "model" inside a caption, a tag in the middle.
        ("model airplanes on a shelf", "model airplanes on a shelf"),
        ("A sign that says ASSISTANT: here", "A sign that says ASSISTANT: here"),
    ],
)
def test_one_leading_role_tag_is_removed(raw: str, expected: str) -> None:
    assert clean_prediction(raw) == expected


def test_tokens_then_role_tag_then_whitespace() -> None:
    raw = "<|im_start|>assistant\n<image>  A   wide\tview\u00a0of a lake.</s><|im_end|>"
    assert clean_prediction(raw) == "A wide view of a lake."


@pytest.mark.parametrize("separator", [*LINE_SEPARATORS, "\r\n"])
def test_each_line_separator_becomes_a_space(separator: str) -> None:
    expected = "first part second part"
    assert normalise_text(f"first part{separator}second part") == expected
    assert clean_prediction(f"first part{separator}second part{separator}") == expected


def test_required_separators_are_covered() -> None:
    for required in ("\r", "\n", "\u2028", "\u2029", "\u0085", "\v", "\f"):
        assert required in LINE_SEPARATORS
    # No character that splits a line for Python is left out.
    for code in range(0x3000):
        character = chr(code)
        if len(f"a{character}b".splitlines()) > 1:
            assert character in LINE_SEPARATORS, hex(code)


def test_meteor_field_separator_is_removed() -> None:
    assert strip_meteor_separator("a ||| b") == "a b"


def test_empty_and_whitespace_only_predictions_become_empty() -> None:
    assert clean_prediction("") == ""
    assert clean_prediction(" <|im_end|>\n</s> ") == ""
