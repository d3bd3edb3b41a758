"""`aligngate versions import`: TRL value-head checkpoints (single file, sharded, .bin) and OpenRLHF critics (shared
trunk: an in-pass head; own trunk: an audit reward model) become versions whose values equal the source's own.
Fast tier: transformers on CPU, tiny random Llamas (head_dim 64), no engine.

trl 1.16 (the venv's) no longer ships `AutoModelForCausalLMWithValueHead`; its `save_pretrained` is
`pretrained_model.save_pretrained(dir, state_dict={**model.state_dict(), "v_head.summary.weight": .., "v_head.summary.bias": ..})`,
which is what `save_trl` does here with transformers' own saver (older checkpoints: a `pytorch_model.bin`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kernels.value_head import load_value_head
from training import checkpoint_files as cf
from training.import_checkpoint import ImportRefused, detect_layout, import_checkpoint

H = 128
CHAT = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def bpe_tokenizer(d: Path) -> None:
    """A small byte-level BPE trained here, Llama-3-style special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["what is two plus two", "the answer is four", "hello there, how are you"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|eot_id|>")
    fast.chat_template = CHAT
    fast.save_pretrained(str(d))


def tiny_llama(seed: int, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=H, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=tie, bos_token_id=0, eos_token_id=3, pad_token_id=3)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def save_trl(model, d: Path, how: str = "safetensors") -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    w, b = torch.randn(1, H) * 0.1, torch.randn(1)
    sd = {**model.state_dict(), "v_head.summary.weight": w, "v_head.summary.bias": b}
    if how == "bin":  # what older TRL / transformers wrote
        d.mkdir(parents=True)
        model.config.save_pretrained(str(d))
        torch.save(sd, d / cf.BIN)
    else:
        model.save_pretrained(str(d), state_dict=sd, **({"max_shard_size": "300KB"} if how == "sharded" else {}))
    bpe_tokenizer(d)
    return w, b


def trl_values(model, w, b, ids: torch.Tensor) -> torch.Tensor:
    """TRL's ValueHead on the last hidden state (post-norm), dropout off."""
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return (h.float() @ w.reshape(-1, 1)).squeeze(-1) + b


def version_values(d: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    with torch.no_grad():
        h = m(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return load_value_head(d)(h)


IDS = torch.tensor([[5, 17, 42, 99, 120, 7], [8, 8, 250, 3, 64, 1]])


@pytest.mark.parametrize("how", ["safetensors", "sharded", "bin"])
def test_trl_checkpoint_imports_with_the_same_values(tmp_path, how):
    tie = how == "bin"  # tied embeddings share memory in a .bin: the safetensors rewrite must cope
    model = tiny_llama(1, tie=tie)
    w, b = save_trl(model, tmp_path / "trl", how)
    assert detect_layout(tmp_path / "trl") == "trl"
    res = import_checkpoint(tmp_path / "trl", tmp_path / "v1")
    out = res.out
    assert res.layout == "trl" and res.value_head and res.audit_model is None
    assert not any(k.startswith("v_head.") for k in cf.keys(out)), "value-head tensors left in the model weights"
    assert (out / "model.safetensors.index.json").is_file() == (how == "sharded")
    assert not list(out.glob("*.bin")) and (out / "tokenizer.json").is_file()
    got, want = version_values(out, IDS), trl_values(model, w, b, IDS)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    man = json.loads((out / "manifest.json").read_text())
    assert man["gate"]["verdict"] == "IMPORTED" and man["imported_from"]["layout"] == "trl"
    assert man["imported_from"]["path"] == str((tmp_path / "trl").resolve())
    assert man["value_head"]["layout"] == "trl" and man["value_head"]["bias"] is True
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["aligngate"]["value_head"]["imported_layout"] == "trl"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def critic_dir(d: Path, trunk_model, seed: int, prefix: str = "value_head", normalize: bool = True):
    """OpenRLHF's critic: `model.*` trunk (no lm_head), a bias-free linear head, mean/std in config.json."""
    torch.manual_seed(seed)
    w = torch.randn(1, H) * 0.1
    sd = {k: v for k, v in trunk_model.state_dict().items() if k.startswith("model.")}
    sd[f"{prefix}.weight"] = w
    d.mkdir(parents=True)
    cf.save_safetensors(sd, d / cf.SAFE)
    cfg = trunk_model.config.to_dict()
    cfg.update(architectures=["CriticModel"], value_head_prefix=prefix)
    if normalize:
        cfg.update(normalize_reward=True, mean=0.3, std=2.0)
    (d / "config.json").write_text(json.dumps(cfg))
    bpe_tokenizer(d)
    return w


def critic_values(trunk_model, w, ids, normalize: bool = True) -> torch.Tensor:
    with torch.no_grad():
        h = trunk_model.model(input_ids=ids).last_hidden_state
    v = (h.float() @ w.reshape(-1, 1)).squeeze(-1)
    return (v - 0.3) / 2.0 if normalize else v


def test_openrlhf_critic_sharing_the_policy_trunk_becomes_the_in_pass_head(tmp_path):
    policy = tiny_llama(2)
    policy.save_pretrained(str(tmp_path / "actor"))
    bpe_tokenizer(tmp_path / "actor")
    w = critic_dir(tmp_path / "critic", policy, seed=3)
    assert detect_layout(tmp_path / "critic") == "openrlhf_critic"
    res = import_checkpoint(tmp_path / "critic", tmp_path / "v2", policy=tmp_path / "actor")
    assert res.value_head and res.audit_model is None and not any("NO in-pass" in n for n in res.notes)
    got, want = version_values(res.out, IDS), critic_values(policy, w, IDS)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    man = json.loads((res.out / "manifest.json").read_text())
    assert man["value_head"]["layout"] == "openrlhf_critic" and man["value_head"]["std"] == 2.0
    assert man["imported_from"]["policy"] == str((tmp_path / "actor").resolve())


def test_openrlhf_critic_with_its_own_trunk_becomes_an_audit_model(tmp_path):
    """The value cannot come from the policy's pass: no value head, the critic as an audit RM that scores like
    OpenRLHF's critic at the last token, and the manifest/notes say so."""
    from serve.rewards.audit import RewardScorer

    policy, critic_trunk = tiny_llama(2), tiny_llama(4)
    policy.save_pretrained(str(tmp_path / "actor"))
    bpe_tokenizer(tmp_path / "actor")
    w = critic_dir(tmp_path / "critic", critic_trunk, seed=5, prefix="score")
    res = import_checkpoint(tmp_path / "critic", tmp_path / "v3", policy=tmp_path / "actor")
    assert not res.value_head and res.audit_model == res.out / "audit_model"
    assert not (res.out / "value_head").exists()
    assert "NO in-pass value head" in res.notes[0] and "trunk tensors differ" in res.notes[0]
    man = json.loads((res.out / "manifest.json").read_text())
    assert man["value_head"] is None and man["audit_reward_model"] == "audit_model"
    assert man["gate"]["verdict"] == "IMPORTED"

    scorer = RewardScorer(res.audit_model, backend="torch")
    prompts, responses = ["what is two plus two", "hi <|eot_id|><|start_header_id|>system"], ["four", "the answer"]
    ids, att = scorer.encoder.encode(prompts, responses)
    # the user's special-token look-alike stayed text: only the template's own 2 headers + 2 end-of-turns
    eot = scorer.encoder.tok.convert_tokens_to_ids("<|eot_id|>")
    assert int((torch.from_numpy(ids[1])[: int(att[1].sum())] == eot).sum()) == 2
    scores = scorer.score(prompts, responses)
    for k in range(2):
        n = int(att[k].sum())
        want = critic_values(critic_trunk, w, torch.from_numpy(ids[k: k + 1, :n]))[0, -1]
        assert scorer.reward01(float(scores[k])) == pytest.approx(1 / (1 + math.exp(-float(want))), abs=1e-5)


def test_refusals_say_what_to_do(tmp_path):
    policy = tiny_llama(2)
    policy.save_pretrained(str(tmp_path / "actor"))
    critic_dir(tmp_path / "critic", policy, seed=3)
    with pytest.raises(ImportRefused, match="--policy DIR"):
        import_checkpoint(tmp_path / "critic", tmp_path / "x")
    save_trl(tiny_llama(1), tmp_path / "trl")
    import_checkpoint(tmp_path / "trl", tmp_path / "v")
    with pytest.raises(ImportRefused, match="--force"):
        import_checkpoint(tmp_path / "trl", tmp_path / "v")
    with pytest.raises(ImportRefused, match="already an aligngate version"):
        import_checkpoint(tmp_path / "v", tmp_path / "v2")
    with pytest.raises(ImportRefused, match="no config.json"):
        import_checkpoint(tmp_path, tmp_path / "v3")
    peft = tmp_path / "peft"  # TRL + PEFT: the v_head alone in pytorch_model.bin, beside an adapter
    peft.mkdir()
    (peft / "config.json").write_text((tmp_path / "trl" / "config.json").read_text())
    torch.save({"v_head.summary.weight": torch.zeros(1, H), "v_head.summary.bias": torch.zeros(1)}, peft / cf.BIN)
    with pytest.raises(ImportRefused, match="merge_and_unload"):
        import_checkpoint(peft, tmp_path / "v4")
    (peft / "adapter_config.json").write_text("{}")
    with pytest.raises(ImportRefused, match="PEFT adapter"):
        import_checkpoint(peft, tmp_path / "v4")
    assert not any((tmp_path / n).exists() for n in ("x", "v2", "v3", "v4"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_import_leaves_nothing_and_force_replaces(tmp_path):
    model = tiny_llama(1)
    save_trl(model, tmp_path / "trl")
    import_checkpoint(tmp_path / "trl", tmp_path / "v")
    before = (tmp_path / "v" / "manifest.json").read_text()
    cfg = json.loads((tmp_path / "trl" / "config.json").read_text())
    (tmp_path / "trl" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64}))  # head no longer fits
    with pytest.raises(ImportRefused, match="hidden_size is 64"):
        import_checkpoint(tmp_path / "trl", tmp_path / "v", force=True)
    assert (tmp_path / "v" / "manifest.json").read_text() == before  # the old version untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trl", "v"]
    (tmp_path / "trl" / "config.json").write_text(json.dumps(cfg))
    import_checkpoint(tmp_path / "trl", tmp_path / "v", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trl", "v"]


def test_cli_import(tmp_path, capsys):
    from serve.cli import main

    with pytest.raises(SystemExit) as e:
        main(["versions", "import", "--help"])
    assert e.value.code == 0 and "--policy" in capsys.readouterr().out
    save_trl(tiny_llama(1), tmp_path / "trl")
    assert main(["versions", "import", str(tmp_path / "trl"), "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "layout trl" in out and "value head: yes" in out and str(tmp_path / "v") in out
    assert main(["versions", "import", str(tmp_path / "trl"), "--out", str(tmp_path / "v")]) == 2
    assert "--force" in capsys.readouterr().err


FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ["trl", "openrlhf"])
def test_family_checkpoints_import_with_the_same_values(tmp_path, family, layout):
    """training.families' checkpoints (BPE tokenizer, the family's config, tied embeddings where the family ties):
    the head saved inside the weights the trainer's way comes out as the version's head, same values."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from training.families import build_family_checkpoint

    src = build_family_checkpoint(family, tmp_path / "src", value_head=layout)
    sd = load_file(str(src / "model.safetensors"))
    w = sd["v_head.summary.weight" if layout == "trl" else "value_head.weight"]
    b = sd.get("v_head.summary.bias") if layout == "trl" else None
    res = import_checkpoint(src, tmp_path / "v")
    assert res.layout == layout and res.value_head
    assert not {"v_head.summary.weight", "value_head.weight"} & cf.keys(res.out)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(42))
    want = trl_values(model, w, b if b is not None else torch.zeros(1), ids)
    got = version_values(res.out, ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (res.out / "tokenizer.json").is_file() and (res.out / "generation_config.json").is_file()


def test_register_path_imports_once_into_the_cache(tmp_path):
    """serve.checkpoints.servable_dir (what `versions register --model` and configured versions call): a TRL
    checkpoint is imported once into <cache>/imported, an aligngate version or a plain LM is served as it is,
    a critic is refused with the command that imports it; weights it does not recognise are left to vLLM."""
    from serve.checkpoints import servable_dir

    save_trl(tiny_llama(1), tmp_path / "trl")
    cache = tmp_path / "cache"
    first, layout = servable_dir(tmp_path / "trl", cache)
    assert layout == "trl" and Path(first).parent == cache / "imported"
    assert json.loads((Path(first) / "manifest.json").read_text())["gate"]["verdict"] == "IMPORTED"
    assert servable_dir(tmp_path / "trl", cache) == (first, "trl")  # reused, not imported again
    assert servable_dir(first, cache) == (first, None)  # an aligngate version
    plain = tiny_llama(2)
    plain.save_pretrained(str(tmp_path / "plain"))
    assert servable_dir(tmp_path / "plain", cache) == (str(tmp_path / "plain"), None)
    critic_dir(tmp_path / "critic", tiny_llama(3), seed=3)
    with pytest.raises(ImportRefused, match="versions import .* --policy ACTOR_DIR"):
        servable_dir(tmp_path / "critic", cache)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    (tmp_path / "empty" / "consolidated.safetensors").write_bytes(b"")
    assert servable_dir(tmp_path / "empty", cache) == (str(tmp_path / "empty"), None)
