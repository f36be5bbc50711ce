"""Tiny umT5 and Qwen2.5-VL tokenizers, trained in-process so tests never download anything.

Both follow the real tokenizers' structure (model type, pre-tokenisation, special tokens and their
relative ids, chat template) with a vocabulary of a few hundred pieces learnt from a small built-in
English corpus. Training is deterministic: building twice gives identical vocabularies and ids.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast, T5TokenizerFast

__all__ = [
    "CORPUS",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN2_5_VL_SPECIAL_TOKENS",
    "build_qwen2_tokenizer",
    "build_umt5_tokenizer",
]

#: Training text for both tokenizers: short video-prompt-like sentences with varied vocabulary.
CORPUS: tuple[str, ...] = (
    "A woman in a red coat walks her dog along a quiet beach at sunset, the waves rolling in slowly.",
    "The camera follows a small boy riding a bicycle through a busy city street full of people and cars.",
    "Two friends laugh while cooking pasta in a bright kitchen; steam rises from the pot.",
    "An old man with a grey beard reads a newspaper on a wooden bench in the park.",
    "A golden retriever jumps into a lake to fetch a yellow tennis ball, splashing water everywhere.",
    "Close-up shot of a young girl smiling at the camera, her long black hair blowing in the wind.",
    "The chef slices fresh vegetables on a cutting board, then tosses them into a hot wok.",
    "A cat sleeps curled up on a soft blue blanket next to a window on a rainy afternoon.",
    "Slow motion: a basketball player leaps toward the hoop and scores as the crowd cheers.",
    "A man wearing glasses and a white shirt types on a laptop in a modern office.",
    "Snow falls gently over a mountain village while smoke drifts from the chimneys.",
    "A teenager skateboards down a ramp, performing a kickflip before landing smoothly.",
    "The woman holds a cup of coffee, looks out over the city skyline and takes a sip.",
    "A red sports car drives along a winding coastal road under a clear blue sky.",
    "Children play football on a green field while their parents watch from the side.",
    "A musician plays the guitar on stage, the lights changing colour with every chord.",
    "Wide shot of a forest at dawn; mist hangs between the tall pine trees.",
    "A baby giggles as a puppy licks her hand on the living room floor.",
    "The astronaut floats inside the space station and waves to the camera.",
    "A bride and groom dance together under strings of warm lights at night.",
    "Realistic style, high quality, detailed textures, natural lighting, 4K, 16 fps, 81 frames.",
    "The subject turns her head to the left, blinks twice and then smiles warmly.",
    "A horse gallops across an open meadow, its mane flowing behind it.",
    "Two people shake hands in front of a glass building, then walk inside.",
    "A painter adds bright strokes of orange and purple to a large canvas.",
    "The little robot rolls across the table, picks up a pencil and draws a circle.",
    "Waves crash against the rocks as seagulls circle overhead in the evening light.",
    "A woman in a green dress rides a bicycle past a row of colourful houses.",
    "The man lifts the box, carries it to the truck and closes the door.",
    "Rain drips from the edge of an umbrella held by a girl waiting for the bus.",
    "An elderly couple walks hand in hand along a tree-lined path in autumn.",
    "Fireworks explode above the river, reflecting on the dark water below.",
    "A scientist pours a blue liquid into a glass flask and watches it bubble.",
    "The dancer spins on one foot, her skirt flaring out in a perfect circle.",
    "A boy feeds bread to ducks at the edge of a small pond.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
    "Numbers 0 1 2 3 4 5 6 7 8 9, symbols: (quotes) 'single' \"double\" - dash / slash & and ?!",
    "Bad quality, blurry, static, overexposed, worst quality, low resolution, deformed hands, extra fingers.",
)

#: Qwen2.5's added special tokens, in the real relative order (real ids 151643..151656).
QWEN2_5_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Renders the Qwen2.5-VL chat format (default system turn, image/video placeholders, generation prompt).
#: Written for this project; all whitespace outside the quoted strings is trimmed by the `-` markers.
QWEN2_5_VL_CHAT_TEMPLATE = """
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for item in content -%}
            {%- if item['type'] == 'text' -%}
                {{- item['text'] -}}
            {%- elif item['type'] in ('image', 'image_url') -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item['type'] == 'video' -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- else -%}
                {{- raise_exception('Unsupported content item type: ' ~ item['type']) -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if messages[0]['role'] != 'system' -%}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\\n' -}}
    {{- render_content(message['content']) -}}
    {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
""".strip()

# The Qwen2 pre-tokenisation regex (same as transformers' Qwen2Tokenizer uses).
_QWEN2_SPLIT_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _train_unigram(corpus: Sequence[str], vocab_size: int) -> sentencepiece_model_pb2.ModelProto:
    """Train a SentencePiece Unigram model in memory (single thread, hence deterministic).

    SentencePiece (rather than `tokenizers`' UnigramTrainer, whose multithreaded EM gives run-to-run
    float differences) also yields the `nmt_nfkc` precompiled normaliser the real umT5 uses.
    """
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is small: take as many pieces as it supports
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


def build_umt5_tokenizer(vocab_size: int = 512, corpus: Sequence[str] = CORPUS) -> T5TokenizerFast:
    """A tiny umT5-style tokenizer: Unigram + Metaspace, pad=0, eos=1, unk=2, appends ``</s>``.

    ``vocab_size`` is an upper bound; the built-in corpus supports a few hundred pieces.
    """
    proto = _train_unigram(corpus, vocab_size)
    vocab = [(piece.piece, float(piece.score)) for piece in proto.pieces]
    return T5TokenizerFast(
        vocab=vocab,
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
    )


def _train_byte_level_bpe(
    corpus: Sequence[str], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's pre-tokeniser; returns (vocab, merges).

    The 256 byte symbols come first, then one token per learnt merge; no special tokens (Qwen adds
    them as added tokens after the vocabulary).
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    model = json.loads(backend.to_str())["model"]  # merges are only exposed through the JSON form
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_qwen2_tokenizer(vocab_size: int = 768, corpus: Sequence[str] = CORPUS) -> Qwen2TokenizerFast:
    """A tiny Qwen2.5-VL-style tokenizer: byte-level BPE plus Qwen's special tokens and chat template.

    The special tokens are appended after the BPE vocabulary in the real order, so e.g.
    ``<|image_pad|>`` is ``<|endoftext|>`` + 12, exactly as 151655 = 151643 + 12 in the real one.
    """
    vocab, merges = _train_byte_level_bpe(corpus, vocab_size)
    first_special_id = len(vocab)
    added_tokens_decoder = {
        first_special_id + offset: AddedToken(token, special=True, normalized=False)
        for offset, token in enumerate(QWEN2_5_VL_SPECIAL_TOKENS)
    }
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added_tokens_decoder,
        extra_special_tokens=list(QWEN2_5_VL_SPECIAL_TOKENS[1:]),
        model_max_length=131072,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
