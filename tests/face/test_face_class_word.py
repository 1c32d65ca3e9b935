"""Class word from gender and `<class word>` substitution in prompts."""

from __future__ import annotations

from uniid_core.face.class_word import class_word_from_gender, substitute_class_word


def test_class_word_from_gender() -> None:
    assert class_word_from_gender("man") == "man"
    assert class_word_from_gender("woman") == "woman"
    assert class_word_from_gender(None) == "person"
    assert class_word_from_gender(None, default="child") == "child"
    assert class_word_from_gender(["man", "woman", "woman", None]) == "woman"
    assert class_word_from_gender(["man", "woman"]) == "person"
    assert class_word_from_gender([]) == "person"
    assert class_word_from_gender(["man", "man", "woman"], unanimous=True) == "person"
    assert class_word_from_gender(["man", None], unanimous=True) == "person"
    assert class_word_from_gender(["woman", "woman"], unanimous=True) == "woman"


def test_substitute_class_word_spellings() -> None:
    prompt = "a photo of a <class word>, <CLASS_WORD> smiling, < class-word > and <classword>"
    assert substitute_class_word(prompt, "woman") == "a photo of a woman, woman smiling, woman and woman"
    assert substitute_class_word("no placeholder", "man") == "no placeholder"
    assert substitute_class_word("<class word>", r"a \1 man") == r"a \1 man"
