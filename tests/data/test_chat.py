"""Chat-template rendering with a tiny tokenizer built offline in the test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from arpo_jax.data import Example, encode_prompt, encode_prompts, render_prompt  # noqa: E402

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["system", "user", "assistant", "Be", "brief.", "What", "is", "2+2?", "A", "B"]
SPECIAL = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # like Llama's tokenizer, encoding with special tokens prepends a BOS
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = TEMPLATE
    return tok


def example(question: str = "What is 2+2?") -> Example:
    return Example(
        id="t/0",
        data_source="t",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        question=question,
        answers=["4"],
    )


def test_render_prompt_text(tokenizer):
    text = render_prompt(tokenizer, example())
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_gen = render_prompt(tokenizer, example().messages, add_generation_prompt=False)
    assert no_gen.endswith("<|im_end|>\n")


def test_encode_prompt_ids_have_one_bos(tokenizer):
    enc = encode_prompt(tokenizer, example())
    v = tokenizer.get_vocab()
    expected = [
        "<s>",
        "<|im_start|>",
        "system",
        "Be",
        "brief.",
        "<|im_end|>",
        "<|im_start|>",
        "user",
        "What",
        "is",
        "2+2?",
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
    ]
    assert enc.token_ids == [v[t] for t in expected]
    assert enc.example_id == "t/0" and enc.text.startswith("<s><|im_start|>")
    assert tokenizer("A")["input_ids"] == [v["<s>"], v["A"]]  # the tokenizer itself would add one


def test_max_length(tokenizer):
    with pytest.raises(ValueError, match="prompt t/0 has 14 tokens > max_length 10"):
        encode_prompt(tokenizer, example(), max_length=10)
    short, long = example("A"), Example("t/1", "t", example("A B A B A B").messages, "A B A B A B", ["x"])
    kept = encode_prompts(tokenizer, [short, long], max_length=12, drop_long=True)
    assert [e.example_id for e in kept] == ["t/0"] and len(kept[0].token_ids) == 12


def test_missing_template_is_reported(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    bare.chat_template = None
    with pytest.raises(ValueError, match="has no chat_template"):
        render_prompt(bare, example())
