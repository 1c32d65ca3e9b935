"""UniID Apply's positive conditioning: identity tokens spliced into each entry, plus a marker saying so.

Every entry UniID Apply outputs carries a ``UniIDMark`` in its options (key ``uniid_marks``): the
Apply's tag, the row role ("positive") and where the N spliced text rows are (right after BOS in the
first 77-token chunk). The sampling patch gives marked rows the identity and scales exactly those
rows; nothing is found by comparing values. Conditioning nodes that copy an entry's options keep the
marker (ConditioningSetTimestepRange, SetArea, SetMask, ControlNet apply, Concat and Average on the
``conditioning_to`` side); an entry built from other options (the ``from`` side of Concat/Average, a
new CLIPTextEncode) is unmarked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from uniid_core.errors import UniIDError
from uniid_core.family import BaseModelFamily
from uniid_core.splice import dropped_prompt_tokens, splice_text_tokens

LOG = logging.getLogger("UniID")
MARKS_KEY = "uniid_marks"
PROMPT_TOKENS_KEY = "uniid_prompt_tokens"
POSITIVE = "positive"


@dataclass(frozen=True)
class UniIDMark:
    """One Apply's claim on an entry: its tag, the rows' role, its text rows [start, start + count)."""

    tag: str
    role: str
    start: int
    count: int


def mark_for(options: dict, tag: str) -> UniIDMark | None:
    """The mark of the Apply ``tag`` on an entry's options (or a sampler's cond dict), if any."""
    for mark in options.get(MARKS_KEY, ()):
        if mark.tag == tag:
            return mark
    return None


def _shifted(marks: tuple, count: int, chunk: int) -> tuple:
    """Earlier marks after inserting ``count`` rows after BOS: moved down, clipped where the chunk ends."""
    out = []
    for mark in marks:
        end = min(mark.start + mark.count, chunk - count)
        out.append(replace(mark, start=mark.start + count, count=max(0, end - mark.start)))
    return tuple(out)


def _ranges(
    entry_start: float, entry_end: float, start: float, end: float
) -> tuple[tuple | None, list[tuple]]:
    """Split an entry's [start, end] percent range into the identity part and the untouched parts."""
    lo, hi = max(entry_start, start), min(entry_end, end)
    if lo >= hi:
        return None, [(entry_start, entry_end)]
    rest = [(entry_start, lo)] if entry_start < lo else []
    rest += [(hi, entry_end)] if hi < entry_end else []
    return (lo, hi), rest


def splice_conditioning(
    positive: list, tokens: torch.Tensor | None, start: float, end: float, tag: str, family: BaseModelFamily
) -> list:
    """Insert the tokens into every entry's first 77-chunk (active in [start, end]) and mark every entry.

    Without text tokens (an adapter-only identity) the entries are only marked. Parts of an entry outside
    [start, end] keep their embedding and are marked with no text rows. Tokens of an identity batch
    (n, N, C) give an entry of one prompt n rows, row i holding identity i's tokens.
    """
    count = 0 if tokens is None else int(tokens.shape[1])
    out = []
    for embeds, options in positive:
        marks = options.get(MARKS_KEY, ())
        if count == 0:
            out.append([embeds, {**options, MARKS_KEY: (*marks, UniIDMark(tag, POSITIVE, 1, 0))}])
            continue
        first_start, first_end = options.get("start_percent", 0.0), options.get("end_percent", 1.0)
        active, rest = _ranges(first_start, first_end, start, end)
        if active is not None:
            _warn_dropped(embeds, options, count, family)
            spliced = splice_text_tokens(_rows_for(embeds, tokens), tokens.to(embeds.dtype), family=family)
            extra = (
                {}
                if active == (first_start, first_end)
                else {"start_percent": active[0], "end_percent": active[1]}
            )
            new_marks = (*_shifted(marks, count, family.chunk), UniIDMark(tag, POSITIVE, 1, count))
            out.append([spliced, {**options, **extra, MARKS_KEY: new_marks}])
        plain_marks = (*marks, UniIDMark(tag, POSITIVE, 1, 0))
        out += [
            [embeds, {**options, "start_percent": s, "end_percent": e, MARKS_KEY: plain_marks}]
            for s, e in rest
        ]
    return out


def _rows_for(embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The prompt embedding with one row per identity of an identity batch (a single prompt is shared)."""
    identities, prompts = int(tokens.shape[0]), int(embeds.shape[0])
    if identities == prompts or identities == 1:
        return embeds
    if prompts == 1:
        return embeds.expand(identities, -1, -1)
    raise UniIDError(
        f"the positive conditioning holds a batch of {prompts} prompts but the identity batch holds "
        f"{identities} identities; give one prompt (shared by every identity) or one per identity"
    )


def _warn_dropped(embeds: torch.Tensor, options: dict, count: int, family: BaseModelFamily) -> None:
    """Warn when the splice drops real prompt tokens (long first chunk) instead of padding."""
    used = options.get(PROMPT_TOKENS_KEY)
    if used is not None:
        lost = dropped_prompt_tokens(int(used), count, family)
    else:
        lost = count if embeds.shape[1] > family.chunk else 0
    if lost:
        LOG.warning(
            "UniID: the first 77-token chunk of the prompt is (nearly) full, so inserting %d identity tokens "
            "drops its last %d token(s); shorten the prompt's first part or put BREAK after ~70 tokens",
            count,
            lost,
        )


def scale_rows(embeds: torch.Tensor, mark: UniIDMark, scale: float) -> torch.Tensor:
    """A copy of ``embeds`` (B, L, C) with the mark's text rows multiplied by ``scale``."""
    stop = mark.start + mark.count
    return torch.cat([embeds[:, : mark.start], embeds[:, mark.start : stop] * scale, embeds[:, stop:]], dim=1)
