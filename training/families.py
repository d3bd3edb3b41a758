"""Small random-weight checkpoints of the common decoder families, built locally (there is no model hub here).

`build_family_checkpoint(family, out_dir)` writes a complete HF directory shaped like a real checkpoint of that
family — its transformers config class and architecture, its vocabulary layout (special tokens where the family
puts them, the config's vocabulary padded beyond the tokenizer where the family does that), a BPE tokenizer
trained here with `tokenizers`, the family's chat template (`training.family_templates`), its
`generation_config.json` eos list — and optionally a value head saved the way a trainer saves it:

    value_head="trl"      TRL's `AutoModelForCausalLMWithValueHead.save_pretrained` layout: the
                          `v_head.summary.weight` [1, H] / `v_head.summary.bias` [1] tensors inside the model's own
                          safetensors, config untouched. (trl 1.16 no longer ships that class; its on-disk layout is
                          reproduced: the wrapper's state dict is the model's plus `v_head.*`, saved by the model.)
    value_head="openrlhf" an OpenRLHF critic's head: `value_head.weight` [1, H], no bias, inside the weights.
    value_head=None       no head.

Tiny on purpose (2 layers, hidden 128, 2 heads, head_dim 64 — the vLLM CPU attention backend refuses other head
sizes — GQA where the family has it) and deterministic by seed; a build takes a second or two.

Simplification: every tokenizer is byte-level BPE (GPT-2 style). Llama-3 and Qwen are byte-level BPE; Mistral,
Gemma and Phi-3 are SentencePiece BPE in the originals (Metaspace `▁`, byte fallback) — their special tokens,
ids layout and templates are the family's, the way ordinary text splits is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")
VALUE_HEADS = ("trl", "openrlhf", None)
HEAD_DIM = 64
BPE_VOCAB = 448  # byte alphabet (256) + merges learnt from the corpus below


@dataclass(frozen=True)
class Family:
    """How one family lays out its vocabulary and ends its turns (token strings; ids are resolved at build)."""

    architecture: str
    before: tuple[str, ...]  # special tokens with the lowest ids (SentencePiece families), before the BPE pieces
    after: tuple[str, ...]  # added tokens after the BPE pieces (byte-level BPE families)
    bos: str | None
    eos: str  # the tokenizer's eos_token
    pad: str | None
    gen_eos: tuple[str, ...]  # generation_config.json eos_token_id list
    config_eos: tuple[str, ...]  # config.json eos_token_id (one id or a list, as the family ships it)
    tie: bool
    kv_heads: int
    pad_config_vocab: bool = False  # config vocab_size padded beyond the tokenizer (rows it never produces)
    fill_to: int = 0  # add reserved specials until the tokenizer has a multiple of this many tokens
    reserved: str = ""  # the name pattern of filler specials, e.g. "<|reserved_special_token_{}|>"
    not_special: tuple[str, ...] = ()  # added tokens that are not special (Qwen's <tool_call> ...)
    digits: bool = False  # split numbers into single digits (Qwen)
    extra: dict = field(default_factory=dict)  # config keywords specific to the family


_LLAMA3_AFTER = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")
_QWEN_AFTER = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
               "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
               "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
               "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
_QWEN_TEXT = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")
_MISTRAL_BEFORE = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]") + tuple(
    f"[control_{i}]" for i in range(8, 32))
_GEMMA_BEFORE = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[@BOS@]") + tuple(
    f"<unused{i}>" for i in range(32)) + ("<start_of_turn>", "<end_of_turn>")
_PHI3_AFTER = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
               "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")

SPECS: dict[str, Family] = {
    "llama3": Family(
        "LlamaForCausalLM", (), _LLAMA3_AFTER, "<|begin_of_text|>", "<|eot_id|>", None,
        gen_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        tie=False, kv_heads=1, fill_to=64, reserved="<|reserved_special_token_{}|>",
        extra={"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    ),
    "qwen2": Family(
        "Qwen2ForCausalLM", (), _QWEN_AFTER, None, "<|im_end|>", "<|endoftext|>",
        gen_eos=("<|im_end|>", "<|endoftext|>"), config_eos=("<|im_end|>",), tie=True, kv_heads=1,
        pad_config_vocab=True, not_special=_QWEN_TEXT, digits=True,
        extra={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    ),
    "qwen3": Family(
        "Qwen3ForCausalLM", (), _QWEN_AFTER + ("<tool_response>", "</tool_response>", "<think>", "</think>"), None,
        "<|im_end|>", "<|endoftext|>", gen_eos=("<|im_end|>", "<|endoftext|>"), config_eos=("<|im_end|>",),
        tie=True, kv_heads=1, pad_config_vocab=True, not_special=_QWEN_TEXT, digits=True,
        extra={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    ),
    "mistral": Family(
        "MistralForCausalLM", _MISTRAL_BEFORE, (), "<s>", "</s>", None, gen_eos=("</s>",), config_eos=("</s>",),
        tie=False, kv_heads=1, extra={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                                      "sliding_window": None},
    ),
    "gemma2": Family(
        "Gemma2ForCausalLM", _GEMMA_BEFORE, (), "<bos>", "<eos>", "<pad>", gen_eos=("<eos>", "<end_of_turn>"),
        config_eos=("<eos>", "<end_of_turn>"), tie=True, kv_heads=1,
        extra={"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": HEAD_DIM,
               "sliding_window": 4096, "hidden_activation": "gelu_pytorch_tanh"},
    ),
    "gemma3": Family(
        "Gemma3ForCausalLM", _GEMMA_BEFORE, ("<start_of_image>", "<end_of_image>", "<image_soft_token>"), "<bos>",
        "<eos>", "<pad>", gen_eos=("<eos>", "<end_of_turn>"), config_eos=("<eos>", "<end_of_turn>"), tie=True,
        kv_heads=1, extra={"query_pre_attn_scalar": HEAD_DIM, "sliding_window": 512,
                           "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
                           "attn_logit_softcapping": None},
    ),
    "phi3": Family(
        "Phi3ForCausalLM", ("<unk>", "<s>", "</s>"), _PHI3_AFTER, "<s>", "<|endoftext|>", "<|endoftext|>",
        gen_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"), config_eos=("<|endoftext|>",), tie=False,
        kv_heads=2, pad_config_vocab=True, extra={"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    ),
}


def corpus() -> list[str]:
    """A small deterministic training text: the default task's arithmetic and string tasks, chat-ish English."""
    words = ("the", "a", "answer", "is", "what", "how", "you", "I", "can", "help", "with", "that", "please", "thanks",
             "sure", "here", "sum", "of", "and", "plus", "minus", "times", "reverse", "upper", "lower", "string",
             "number", "question", "hello", "there", "today", "assistant", "user", "system", "tool", "call", "be",
             "brief", "correct", "wrong", "good", "bad", "love", "model", "reward", "policy", "value")
    lines = []
    for a in range(0, 100, 3):
        for b in range(0, 100, 7):
            lines.append(f"{a}+{b}={a + b}")
            lines.append(f"What is {a} plus {b}? The answer is {a + b}.")
            lines.append(f"{a}*{b % 10}={a * (b % 10)}; {a}-{b}={a - b}")
    for i in range(400):
        w = [words[(i * 7 + k * 13) % len(words)] for k in range(3 + i % 9)]
        s = " ".join(w)
        lines.append(s.capitalize() + ("?" if i % 3 == 0 else "."))
        lines.append(f"reverse: {w[0]} -> {w[0][::-1]}; upper: {w[-1]} -> {w[-1].upper()}")
        lines.append(f"User: {s}\nAssistant: Sure, {' '.join(reversed(w))}!")
    return lines


def build_tokenizer(family: str):
    """The family's tokenizer as a `PreTrainedTokenizerFast` (BPE trained on `corpus()`), with its chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from training.family_templates import TEMPLATES

    spec = SPECS[family]
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if spec.digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    # specials given to the trainer take the lowest ids, in order (SentencePiece families put them first)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB + len(spec.before), special_tokens=list(spec.before),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    after = list(spec.after)
    if spec.fill_to:
        n, i = tok.get_vocab_size() + len(after), 3
        while n % spec.fill_to or i == 3:  # at least a few reserved specials, like the family ships
            after.append(spec.reserved.format(i))
            n, i = n + 1, i + 1
    tok.add_tokens([AddedToken(t, special=t not in spec.not_special, normalized=False) for t in after])
    if spec.bos:  # encode(add_special_tokens=True) prepends bos, as the family's tokenizer does (Qwen has none)
        tok.post_processor = processors.TemplateProcessing(single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B",
                                                           special_tokens=[(spec.bos, tok.token_to_id(spec.bos))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token="<unk>" if "<unk>" in spec.before else None,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TEMPLATES[family]
    return fast


MAX_POSITIONS = 1024


def _config(family: str, vocab: dict[str, int], vocab_size: int, *, num_layers: int, hidden_size: int,
            num_heads: int, init_std: float, max_positions: int):
    import transformers

    spec = SPECS[family]
    cls = {"llama3": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "mistral": "MistralConfig",
           "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig", "phi3": "Phi3Config"}[family]
    eos = [vocab[t] for t in spec.config_eos]
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=min(spec.kv_heads, num_heads),
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        tie_word_embeddings=spec.tie,
        bos_token_id=vocab[spec.bos] if spec.bos else None,
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=vocab[spec.pad] if spec.pad else None,
        rms_norm_eps=1e-6,
        **spec.extra,
    )
    if family != "phi3":  # Phi-3 derives head_dim from hidden / heads (its fused qkv has no head_dim setting)
        kw["head_dim"] = HEAD_DIM
    if hidden_size // num_heads != HEAD_DIM and family == "phi3":
        raise ValueError(f"phi3: hidden_size / num_heads must be {HEAD_DIM}")
    cfg = getattr(transformers, cls)(**kw)
    cfg.architectures = [spec.architecture]
    cfg.dtype = "float32"
    return cfg


def build_family_checkpoint(
    family: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    value_head: str | None = "trl",
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 2,
    init_std: float = 0.02,
    max_positions: int = MAX_POSITIONS,
) -> Path:
    """Write a random-weight checkpoint of `family` into `out_dir` (see the module docstring); returns the path."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family not in SPECS:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    if value_head not in VALUE_HEADS:
        raise ValueError(f"unknown value head layout {value_head!r}; choose from {VALUE_HEADS}")
    spec = SPECS[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family)
    vocab = tok.get_vocab()
    n_tok = len(tok)
    # Qwen / Phi-3 pad the embedding matrix beyond the tokenizer (Qwen2.5: 151665 tokens, 151936 rows)
    vocab_size = (n_tok + 3 + 63) // 64 * 64 if spec.pad_config_vocab else n_tok
    cfg = _config(family, vocab, vocab_size, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                  init_std=init_std, max_positions=max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    gen = [vocab[t] for t in spec.gen_eos]
    GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=gen if len(gen) > 1 else gen[0], pad_token_id=cfg.pad_token_id,
        do_sample=True, temperature=0.7, top_p=0.9,
    ).save_pretrained(out)
    if value_head is not None:
        g = torch.Generator().manual_seed(seed + 1)
        w = torch.randn(1, hidden_size, generator=g) / hidden_size**0.5
        b = torch.randn(1, generator=g) * 0.1
        weights = out / "model.safetensors"
        sd = load_file(str(weights))
        if value_head == "trl":  # AutoModelForCausalLMWithValueHead: the model's state dict plus v_head.*
            sd.update({"v_head.summary.weight": w, "v_head.summary.bias": b})
        else:  # OpenRLHF critic: Linear(H, 1, bias=False) named value_head
            sd["value_head.weight"] = w
        save_file(sd, str(weights), metadata={"format": "pt"})
    (out / "aligngate_build.json").write_text(json.dumps({"family": family, "seed": seed, "value_head": value_head,
                                                          "num_layers": num_layers, "hidden_size": hidden_size,
                                                          "init_std": init_std}))
    return out
