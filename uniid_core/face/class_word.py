"""The prompt's class word (man / woman / a caller's word) and `<class word>` substitution."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

DEFAULT_CLASS_WORD = "person"
GENDER_WORDS = ("man", "woman")
CLASS_WORD_PATTERN = re.compile(r"<\s*class[\s_-]*word\s*>", re.IGNORECASE)
"""Matches `<class word>`, `<class_word>`, `<Class-Word>`, `< classword >` and similar spellings."""


def class_word_from_gender(
    genders: str | None | Iterable[str | None], default: str = DEFAULT_CLASS_WORD, unanimous: bool = False
) -> str:
    """Majority gender ("man"/"woman") over one or more references; the default on a tie or if unknown.

    ``unanimous``: the gender only when every reference has it (several people sharing one prompt).
    """
    if genders is None or isinstance(genders, str):
        genders = [genders]
    genders = list(genders)
    if unanimous and len(set(genders)) > 1:
        return default
    votes = Counter(g for g in genders if g in GENDER_WORDS)
    if not votes:
        return default
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return default
    return ranked[0][0]


def substitute_class_word(prompt: str, word: str) -> str:
    """Replace every `<class word>` placeholder (any common spelling, any case) with the class word."""
    return CLASS_WORD_PATTERN.sub(lambda _: word, prompt)
