"""Splicing identity tokens into prompt embeddings, and reporting dropped prompt tokens."""

from __future__ import annotations

import pytest
import torch

from uniid_core.errors import UniIDError
from uniid_core.splice import dropped_prompt_tokens, prompt_token_count, splice_text_tokens


def _prompt(batch: int, chunks: int, width: int = 8) -> torch.Tensor:
    rows = torch.arange(77 * chunks, dtype=torch.float32)
    base = rows[None, :, None].expand(batch, -1, width).clone()
    return base + 1000 * torch.arange(batch, dtype=torch.float32)[:, None, None]


def test_single_chunk_official_layout():
    prompt = _prompt(1, 1)
    tokens = -torch.ones(1, 3, 8)
    out = splice_text_tokens(prompt, tokens, scale=0.5)
    assert out.shape == (1, 77, 8)
    torch.testing.assert_close(out[:, 0], prompt[:, 0])
    torch.testing.assert_close(out[:, 1:4], -0.5 * torch.ones(1, 3, 8))
    torch.testing.assert_close(out[:, 4:], prompt[:, 1:74])


def test_multi_chunk_only_the_first_chunk_changes():
    prompt = _prompt(2, 3)
    tokens = -torch.ones(1, 3, 8)
    out = splice_text_tokens(prompt, tokens)
    assert out.shape == (2, 231, 8)
    torch.testing.assert_close(out[:, 77:], prompt[:, 77:])
    torch.testing.assert_close(out[:, 4:77], prompt[:, 1:74])
    torch.testing.assert_close(out[:, 1:4], tokens.expand(2, -1, -1))


def test_batch_tokens_and_per_row_scale():
    prompt = _prompt(2, 1)
    tokens = torch.stack([torch.ones(3, 8), 2 * torch.ones(3, 8)])
    out = splice_text_tokens(prompt, tokens, scale=torch.tensor([0.5, 1.8]))
    torch.testing.assert_close(out[0, 1:4], 0.5 * torch.ones(3, 8))
    torch.testing.assert_close(out[1, 1:4], 3.6 * torch.ones(3, 8))
    torch.testing.assert_close(out[1, 4:], prompt[1, 1:74])


def test_dtype_follows_the_prompt():
    out = splice_text_tokens(_prompt(1, 1).half(), torch.ones(1, 3, 8))
    assert out.dtype == torch.float16


@pytest.mark.parametrize(
    ("prompt", "tokens", "match"),
    [
        (torch.zeros(1, 76, 8), torch.zeros(1, 3, 8), "77-token chunks"),
        (torch.zeros(1, 77, 8), torch.zeros(1, 3, 4), "wide"),
        (torch.zeros(2, 77, 8), torch.zeros(3, 3, 8), "batch"),
        (torch.zeros(77, 8), torch.zeros(1, 3, 8), "expected"),
    ],
)
def test_bad_shapes_are_clear_errors(prompt, tokens, match):
    with pytest.raises(UniIDError, match=match):
        splice_text_tokens(prompt, tokens)


def _ids(content: int, chunks: int = 1) -> list[int]:
    row = [49406] + [320] * content + [49407]
    row += [49407] * (77 - len(row))
    return row * chunks


def test_prompt_tokens_and_what_the_splice_drops():
    assert [prompt_token_count(_ids(n)) for n in (10, 73, 74, 75)] == [10, 73, 74, 75]
    assert [dropped_prompt_tokens(prompt_token_count(_ids(n)), 3) for n in (10, 73, 74, 75)] == [0, 0, 1, 2]
    no_eos = [49406] + [320] * 76
    assert prompt_token_count(no_eos) == 76 and dropped_prompt_tokens(76, 3) == 3
    padded_with_zero = [49406] + [320] * 70 + [49407] + [0] * 5
    assert prompt_token_count(padded_with_zero) == 70 and dropped_prompt_tokens(70, 3) == 0
    assert prompt_token_count(_ids(75, 2)[:77]) == 75
