"""Token ids are remembered per tokenizer and vocabulary: the same ids as the tokenizer gives, and a prompt
that names a token added later is tokenized again."""

from __future__ import annotations

import torch

from clic.learn import tokenize
from clic.models import build_tiny


def direct(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def test_cached_ids_equal_the_tokenizers_and_follow_added_tokens() -> None:
    tokenizer = build_tiny().tokenizer
    prompts = ["A chair with <w*> style", "A photo of <w*>"]
    before = tokenize(tokenizer, prompts)
    assert torch.equal(before, direct(tokenizer, prompts))
    assert torch.equal(tokenize(tokenizer, prompts), before)  # again: from the cache, the same
    tokenize(tokenizer, prompts)[0, 0] = -1  # a caller changing its copy does not change the cache
    assert torch.equal(tokenize(tokenizer, prompts), before)

    tokenizer.add_tokens(["<w*>"])
    after = tokenize(tokenizer, prompts)
    new_id = tokenizer.convert_tokens_to_ids("<w*>")
    assert torch.equal(after, direct(tokenizer, prompts))
    assert (after == new_id).sum() == 2 and not (before == new_id).any()
