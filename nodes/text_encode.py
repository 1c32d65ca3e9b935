"""UniIDTextEncode: CLIP text encode with the identity's <class word> substituted."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from uniid_core.face.class_word import DEFAULT_CLASS_WORD, substitute_class_word
from uniid_core.splice import prompt_token_count

from .conditioning import PROMPT_TOKENS_KEY
from .schema import CATEGORY, UniIDNode


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


class UniIDTextEncode(UniIDNode):
    """Encode a prompt with CLIP after replacing <class word> by the identity's word (man/woman/person)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDTextEncode",
            display_name="UniID Text Encode",
            category=CATEGORY,
            description="CLIP Text Encode with <class word> substitution for UniID prompts.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL checkpoint's CLIP"),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="a photo of a <class word>",
                    tooltip="Prompt; <class word> is replaced by class_word",
                ),
                io.String.Input(
                    "class_word",
                    default=DEFAULT_CLASS_WORD,
                    tooltip="Usually the class_word output of UniID Encode Face",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning"),
                io.String.Output(display_name="prompt"),
            ],
        )

    @classmethod
    def execute(cls, clip, text: str, class_word: str) -> io.NodeOutput:
        prompt = substitute_class_word(text, class_word.strip() or DEFAULT_CLASS_WORD)
        tokens = clip.tokenize(prompt)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        used = first_chunk_tokens(tokens)
        conditioning = [[c, {**o, PROMPT_TOKENS_KEY: used}] for c, o in conditioning]
        return io.NodeOutput(conditioning, prompt)
