"""The tiny default tokenizer: byte-level, no merges, plus a few special tokens.

Every byte is one token, so any text (any language, any emoji) round-trips, and for the ASCII tasks of the
default training task a token is a character. Built with the `tokenizers` library and saved as a
`PreTrainedTokenizerFast` directory that transformers and vLLM load like any hub tokenizer.

Two special tokens are reserved for the in-pass value read-out (serve/vllm_ext/value_slots.py, README "Rewards"):
`VALUE_A` and `VALUE_B`. They are never produced by the tokenizer from text and never sampled.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

BOS = "<|bos|>"
EOS = "<|end|>"  # ends every turn; the generation stop token
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
VALUE_A = "<|value_a|>"
VALUE_B = "<|value_b|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, VALUE_A, VALUE_B]

# A role marker is a special token, so the template cannot be confused by user text that looks like one.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")


def build_tokenizer_json() -> Tokenizer:
    byte_alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for raw bytes
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(byte_alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def save_tokenizer(out_dir: str | Path) -> "object":
    """Write a transformers-loadable tokenizer (tokenizer.json, config, chat template) into `out_dir`."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer_json(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, VALUE_A, VALUE_B],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def vocab_size() -> int:
    return len(SPECIAL_TOKENS) + 256
