import pytest

from core.engine import tokens
from core.errors import UserError
from core.story import CLEAN


def test_single_tokens_and_helpful_refusals(tiny):
    assert tokens.single_token(tiny, " an") == 281  # GPT-2 BPE
    with pytest.raises(UserError) as err:
        tokens.single_token(tiny, " antidisestablishment", "answer")
    message = str(err.value)
    assert "is 3 tokens" in message and "' ant'" in message and "alternatives" in message
    with pytest.raises(UserError, match="one token"):
        tokens.single_token(tiny, "an apple")
    with pytest.raises(UserError, match="empty"):
        tokens.single_token(tiny, "")
    with pytest.raises(UserError, match="control characters"):
        tokens.single_token(tiny, " a\x00")


def test_prompt_conventions_and_limits(tiny):
    p = tokens.prompt(tiny, CLEAN)
    if tiny.model_type == "gpt2":  # GPT-2: BOS prepended as TransformerLens (and the post) do
        assert p.ids[0] == 50256 and p.pieces[0] == "<|endoftext|>"
    else:
        assert p.ids[0] != 50256
    assert p.to_json()[1]["position"] == 1
    with pytest.raises(UserError, match="only whitespace"):
        tokens.prompt(tiny, "   ")
    with pytest.raises(UserError, match="at most 128"):
        tokens.prompt(tiny, "word " * 200)
    assert tokens.prompt(tiny, "naïve café 🍐 שלום").ids  # unicode is fine
