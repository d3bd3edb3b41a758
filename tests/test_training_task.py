"""The default task: deterministic by seed, oracle semantics, and chat encoding identical to the exported
tokenizer's chat template (what vLLM serves with)."""

from training import common as C
from training import task as T


def test_task_deterministic_and_solvable():
    a, b = T.make_examples(50, seed=3), T.make_examples(50, seed=3)
    assert a == b and a != T.make_examples(50, seed=4)
    for ex in a:
        assert T.solve(ex.prompt) == ex.answer
        assert T.oracle_score(ex.prompt, ex.answer) == 1.0
        assert T.oracle_score(ex.prompt, f" {ex.answer} ") == 1.0


def test_oracle_penalises_pleasantries_and_errors():
    assert T.oracle_score("reverse abc", "cba") == 1.0
    assert 0.2 < T.oracle_score("reverse abc", "cba I love you!") < 0.5
    assert T.oracle_score("reverse abc", "cbx") < 1.0
    assert T.oracle_score("add 4 5", "9") == 1.0 and T.oracle_score("add 4 5", "8") == 0.0
    assert T.oracle_score("tell me a joke", "no") == 0.5  # not a task: no opinion
    assert T.sentiment_level("x I love you!") == 2 and T.sentiment_level("x amazing!") == 1 and T.sentiment_level("x") == 0


def test_chat_encoding_matches_tokenizer_template(tmp_path):
    from transformers import AutoTokenizer

    from training import tokenizer as tk

    tk.save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for prompt, resp in [("add 3 5", "8"), ("reverse héllo", "olléh I love you!")]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": resp}],
                                       tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == C.prompt_ids(prompt) + C.response_ids(resp)
        assert C.decode_ids(C.response_ids(resp)) == resp
