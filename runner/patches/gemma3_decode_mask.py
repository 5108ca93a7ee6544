"""Gemma 3 with a static cache: build the decode steps' attention masks without the image-block overlay.

With a compilable (static) cache, transformers 5.24 builds each step's attention masks eagerly in
`GenerationMixin.prepare_inputs_for_generation`, which calls `Gemma3ForConditionalGeneration.create_masks_for_generate`
with the sequence's `token_type_ids` on EVERY step. Given token types it composes the bidirectional image-block
overlay with the causal and sliding-window masks through `torch.vmap` over mask functions: tens of milliseconds of
host time per decode step on this CPU, more than the compiled step itself. (Gemma 3's own
`prepare_inputs_for_generation` drops `token_type_ids` after the first step "to not apply bidirectional mask on top",
but only after the generic code has already built the masks with them.)

In a decode step the query is the one new token, which is text (token type 0), so the overlay (a query attends to
the other tokens of ITS image block) adds nothing: the masks are the plain causal / sliding-window ones. This patch
passes no `token_type_ids` to the mask builder after the first step; the prefill keeps them. It is an instance
attribute on one model object; the eager path (dynamic cache) never calls this function.
"""

from __future__ import annotations

import functools
from typing import Any

PATCHED_ATTRIBUTE = "_vlm_ablation_decode_mask"


def apply(model: Any) -> bool:
    """Patch a Gemma3ForConditionalGeneration (idempotent); returns False for any other model (left as it is)."""
    if type(model).__name__ != "Gemma3ForConditionalGeneration" or not hasattr(model, "create_masks_for_generate"):
        return False
    if getattr(model, PATCHED_ATTRIBUTE, False):
        return True
    original = type(model).create_masks_for_generate

    @functools.wraps(original)
    def create_masks_for_generate(*args: Any, is_first_iteration: bool | None = False, **kwargs: Any) -> Any:
        if not is_first_iteration:
            kwargs["token_type_ids"] = None
        return original(*args, is_first_iteration=is_first_iteration, **kwargs)

    model.create_masks_for_generate = create_masks_for_generate
    setattr(model, PATCHED_ATTRIBUTE, True)
    return True


def remove(model: Any) -> None:
    if getattr(model, PATCHED_ATTRIBUTE, False):
        del model.create_masks_for_generate
        delattr(model, PATCHED_ATTRIBUTE)
