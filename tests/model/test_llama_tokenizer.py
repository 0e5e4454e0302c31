"""The tokenizer built from GGUF metadata gives the reference tokenizer's ids, and the chat
template renders what transformers renders, inside a sandbox."""

from __future__ import annotations

import pytest

from plugstack import GenerationError, ModelLoadError, Tokenizer

CORPUS = [
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "Pi is 3.14159265358979323846264338327950288419716939937510 and e is 2.718.",
    "Call 1-800-555-0199 before 2024-12-31, order #123456789012345.",
    "Emoji: 🙂👍🏽👨‍👩‍👧‍👦 🇫🇷 ✨",
    "中文分词测试：我爱北京天安门。日本語のテキスト、한국어 텍스트.",
    "Whitespace   runs\t\ttabs\n\n\nnewlines    \n  trailing   ",
    "   leading spaces",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special in text: <|endoftext|><repo_name>x<file_sep>",
    "don't won't they're I'm we'll you've she'd LOUD'S",
    "Ünïcödé àccents café naïve résumé — “quotes” ‘single’ … ellipsis",
    "",
    "a",
    "\u00ad\u200b\ufeffinvisible",
]


@pytest.mark.slow
def test_ids_match_reference_tokenizer(smollm2, hf_smollm2_tokenizer):
    tok = smollm2.tokenizer
    assert isinstance(tok, Tokenizer)
    for text in CORPUS:
        expected = hf_smollm2_tokenizer.encode(text, add_special_tokens=True)
        assert tok.encode(text) == expected, text
        assert tok.decode(expected) == hf_smollm2_tokenizer.decode(expected), text
        assert tok.decode(expected, skip_special_tokens=True) == hf_smollm2_tokenizer.decode(
            expected, skip_special_tokens=True
        ), text


NUMERALS = "x² + y³ = ½ and ٣٤ or ௫ and 2024"


@pytest.mark.slow
def test_non_ascii_numerals_split_like_llama_cpp(smollm2, hf_smollm2_tokenizer):
    """``tokenizer.ggml.pre = smollm`` means: isolate every ``\\p{N}`` character, then GPT-2's
    split (llama.cpp's llama-vocab.cpp; SmolLM2's own tokenizer.json says the same with
    ``Digits(individual_digits=True)``). transformers' GGUF conversion has no entry for
    ``smollm`` and uses GPT-2's split alone, which differs only on non-ASCII numerals such
    as " ½" (ASCII digits never merge in this vocabulary). The oracle here is transformers'
    tokenizer with llama.cpp's rule spelled out literally."""
    import copy

    from tokenizers import Regex, pre_tokenizers

    rule = copy.deepcopy(hf_smollm2_tokenizer.backend_tokenizer)
    rule.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert smollm2.tokenizer.encode(NUMERALS) == rule.encode(NUMERALS).ids
    assert smollm2.tokenizer.decode(rule.encode(NUMERALS).ids) == NUMERALS


@pytest.mark.slow
def test_special_tokens_of_smollm2(smollm2):
    tok = smollm2.tokenizer
    assert tok.encode("<|im_start|>") == [1]  # a control token stays whole
    assert tok.encode("Hi")[0] != 1  # and no BOS is added (add_bos_token is false)
    assert tok.eos_token_ids == (2,) and tok.pad_token_id == 2
    assert tok.decode([1, 4093, 2], skip_special_tokens=True) == "user"
    assert tok.vocab_size == 49152


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why? 🐔\nTell me  with   spaces."},
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(add_generation_prompt, smollm2, hf_smollm2_tokenizer):
    for messages in CONVERSATIONS:
        expected = hf_smollm2_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def _template(text: str):
    from plugstack.plugins.llama.chat_template import ChatTemplate

    return ChatTemplate(text, source="evil.gguf")


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['os'].system('echo pwned') }}",
        "{% set x = messages.append({'role': 'x'}) %}{{ x }}",  # mutation is refused too
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_hostile_template_cannot_run_code(hostile, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model file is broken: its chat template (tried|fails).*evil\.gguf"):
        _template(hostile).render([{"role": "user", "content": "hi"}])


def test_template_helpers_and_errors():
    t = _template(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}"
        "{% endif %}{{ bos_token }}{{ messages | tojson }}{% if add_generation_prompt %}>{% endif %}"
    )
    assert t.render([{"role": "user", "content": "é"}], bos_token="<s>") == '<s>[{"role": "user", "content": "é"}]>'
    with pytest.raises(GenerationError, match="rejected the messages: first message must be from the user"):
        t.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(GenerationError, match="expected a dict with 'role' and 'content'"):
        t.render([{"content": "no role"}])
    with pytest.raises(ModelLoadError, match=r"broken: its chat template does not compile.*evil\.gguf"):
        _template("{% for m in messages %}")
