"""UniIDTextEncode: CLIP text encode with the identity's <class word> substituted."""

from __future__ import annotations

from uniid_core.face.class_word import substitute_class_word
from uniid_core.splice import prompt_token_count

from .conditioning import PROMPT_TOKENS_KEY
from .loaders import CATEGORY


def first_chunk_tokens(tokens: dict) -> int:
    """Real prompt tokens in the first 77-chunk (between BOS and the first EOS), the most over the towers.

    ``tokens`` is ComfyUI's tokenizer output: per tower, chunks of (id or embedding, weight) pairs.
    """
    return max(
        (
            prompt_token_count([int(t[0]) if isinstance(t[0], (int, float)) else -1 for t in chunks[0]])
            for chunks in tokens.values()
            if chunks
        ),
        default=0,
    )


class UniIDTextEncode:
    """Encode a prompt with CLIP after replacing <class word> by the identity's word (man/woman/person)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The SDXL checkpoint's CLIP"}),
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "default": "a photo of a <class word>",
                        "tooltip": "Prompt; <class word> is replaced by class_word",
                    },
                ),
                "class_word": (
                    "STRING",
                    {
                        "default": "person",
                        "tooltip": "Usually the class_word output of UniID Encode Face",
                    },
                ),
            }
        }

    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "prompt")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "CLIP Text Encode with <class word> substitution for UniID prompts."

    def encode(self, clip, text: str, class_word: str) -> tuple:
        prompt = substitute_class_word(text, class_word.strip() or "person")
        tokens = clip.tokenize(prompt)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        used = first_chunk_tokens(tokens)
        conditioning = [[c, {**o, PROMPT_TOKENS_KEY: used}] for c, o in conditioning]
        return (conditioning, prompt)
