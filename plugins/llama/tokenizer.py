r"""The tokenizer: byte-level BPE from GGUF metadata or a ``tokenizer.json``.

Built on Hugging Face's ``tokenizers`` library. A GGUF file stores the vocabulary, merges
and token types but not the pre-tokenizer; its ``tokenizer.ggml.pre`` names the split
rules the merges were learned with, and we follow llama.cpp's table (llama-vocab.cpp).
``smollm`` is GPT-2's split after isolating every ``\p{N}`` character, which is also what
SmolLM2's own ``tokenizer.json`` says (``Digits(individual_digits)`` + ``ByteLevel``).
transformers' GGUF conversion has no ``smollm`` entry and uses GPT-2's split alone: the
ids agree except around non-ASCII numerals such as " ½" (ASCII digits never merge in
that vocabulary), where we side with llama.cpp and the model's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from plugstack.errors import ModelLoadError

from .chat_template import ChatTemplate
from .checks import broken, flag, integer, read_bytes, read_json, shown, text

__all__ = ["LlamaTokenizer", "from_gguf_metadata", "from_hf_dir"]

log = structlog.get_logger("plugstack.model")

# Split regexes of pre-tokenizer types (names as llama.cpp writes them in tokenizer.ggml.pre).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}  # fmt: skip
# Types whose split is GPT-2's own regex (ByteLevel's built-in), optionally digits first.
_GPT2_LIKE = {"default": False, "gpt2": False, "smollm": True, "starcoder": True, "refact": True}

_CONTROL, _USER_DEFINED = 3, 4


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class LlamaTokenizer:
    """Implements :class:`plugstack.Tokenizer` over a ``tokenizers.Tokenizer``."""

    def __init__(
        self,
        tok: Any,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int | None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: ChatTemplate | None = None,
        source: str = "",
    ) -> None:
        self._tok = tok
        self.eos_token_ids = tuple(dict.fromkeys(int(i) for i in eos_token_ids))
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else self.eos_token_ids[0])
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        self.source = source
        #: The system message a chat without one gets (``model.system_prompt``); None: the template's own.
        self.system_prompt: str | None = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (for tools that need offsets etc.)."""
        return self._tok

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            from plugstack.errors import GenerationError

            raise GenerationError(
                f"The tokenizer of {self.source or 'this model'} has no chat template, so chat "
                f"messages cannot be rendered. Use plain-text prompts, or a model that ships one."
            )
        if self.system_prompt and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.chat_template.render(
            messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )  # fmt: skip


def _with_bos(tok: Any, bos: str | None, bos_id: int | None, add_bos: bool) -> None:
    from tokenizers import processors

    if add_bos and bos is not None and bos_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = None


def _gguf_vocab(meta: dict[str, Any], where: str) -> tuple[list[str], list[tuple[str, str]], list[int]]:
    """``(tokens, merge pairs, token types)`` of a GGUF tokenizer, each checked."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise broken("metadata key tokenizer.ggml.model is missing", where)
    if text(kind, "tokenizer.ggml.model", where) != "gpt2":
        raise ModelLoadError(
            f"{where}: tokenizer model {shown(kind)} is not supported (only 'gpt2' byte-level BPE, used by "
            f"SmolLM, Llama 3 and Qwen2). Use a Hugging Face directory with tokenizer.json instead."
        )
    tokens = _items(meta, "tokenizer.ggml.tokens", str, "strings", where)
    merges = _items(meta, "tokenizer.ggml.merges", str, "strings", where)
    types = _items(meta, "tokenizer.ggml.token_type", int, "integers", where, [1] * len(tokens))
    if len(types) != len(tokens):
        raise broken(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens", where)
    pairs = []
    for i, m in enumerate(merges):
        a, space, b = m.partition(" ")
        if not (a and space and b):
            raise broken(f"tokenizer.ggml.merges[{i}] is {shown(m)}, expected two tokens separated by a space", where)
        pairs.append((a, b))
    return tokens, pairs, types


def _items(meta: dict[str, Any], key: str, kind: type, kinds: str, where: str, default: Any = None) -> list[Any]:
    """A non-empty list of ``kind`` (bools are not integers here)."""
    value = meta.get(key, default)
    if value is None:
        raise broken(f"metadata key {key} is missing", where)
    if not (isinstance(value, list) and value and all(type(v) is kind for v in value)):
        raise broken(f"{key} is {shown(value)}, expected a non-empty list of {kinds}", where)
    return value


def _token_id(meta: dict[str, Any], key: str, n_tokens: int, where: str) -> int | None:
    """A special token's id; one outside the vocabulary is ignored, as llama.cpp does."""
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is None:
        return None
    i = integer(value, f"tokenizer.ggml.{key}", where, low=0)
    if i >= n_tokens:
        log.warning("model.tokenizer.bad_special_token", key=key, id=i, vocab=n_tokens, source=where)
        return None
    return i


def from_gguf_metadata(meta: dict[str, Any], *, source: str = "") -> LlamaTokenizer:
    """A tokenizer from a GGUF file's ``tokenizer.*`` metadata (gpt2 byte-level BPE)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens, pairs, types = _gguf_vocab(meta, source)
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    # Tokens outside the byte alphabet (rare, e.g. control tokens written raw) are respelled
    # byte by byte, as transformers' GGUF conversion does.
    vocab = {
        t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # tokenizers raises a bare Exception for a merge outside the vocabulary
        raise broken(f"tokenizer.ggml.merges do not fit tokenizer.ggml.tokens ({e})", source) from None

    pre = text(meta.get("tokenizer.ggml.pre", "default"), "tokenizer.ggml.pre", source)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"), byte_level]
        )
    elif _GPT2_LIKE.get(pre, False):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        if pre not in _GPT2_LIKE:
            log.warning("model.tokenizer.unknown_pre_tokenizer", pre=pre, used="gpt2", source=source)
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) are matched whole and are "special" (skippable on
    # decode); user-defined ones are matched whole but are ordinary text.
    # A control token outside the byte alphabet is a llama.cpp mislabel; transformers skips
    # those too (adding them would grow the vocabulary past the embedding).
    typed = list(zip(tokens, types, strict=True))
    control = [t for t, k in typed if k == _CONTROL and set(t) <= spelled]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user = [t for t, k in typed if k == _USER_DEFINED]
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    def token(key: str) -> tuple[int | None, str | None]:
        i = _token_id(meta, key, len(tokens), source)
        return (i, tokens[i]) if i is not None else (None, None)

    bos_id, bos = token("bos_token_id")
    eos_id, eos = token("eos_token_id")
    eot_id, _ = token("eot_token_id")
    pad_id, _ = token("padding_token_id")
    _with_bos(tok, bos, bos_id, flag(meta.get("tokenizer.ggml.add_bos_token", False), "tokenizer.ggml.add_bos_token",
                                     source))  # fmt: skip
    eos_ids = [i for i in (eos_id, eot_id) if i is not None]
    if not eos_ids:
        raise broken(
            f"tokenizer.ggml.eos_token_id is missing or outside the vocabulary of {len(tokens)} tokens", source
        )
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        text(template, "tokenizer.chat_template", source)
    return LlamaTokenizer(
        tok, eos_token_ids=eos_ids, pad_token_id=pad_id, bos_token=bos, eos_token=eos,
        chat_template=ChatTemplate(template, source=source) if template else None, source=source,
    )  # fmt: skip


def _token_text(value: Any, key: str, where: Path) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": ...}
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise broken(f"{key} is {shown(value)}, expected a token's text", where)


def _template(directory: Path, tcfg: dict[str, Any]) -> tuple[str | None, Path]:
    """The chat template's text and the file it came from."""
    jinja = directory / "chat_template.jinja"
    if jinja.exists():  # transformers >= 4.50 saves the template on its own
        try:
            return read_bytes(jinja).decode("utf-8"), jinja
        except UnicodeDecodeError as e:
            raise broken(f"chat_template.jinja is not UTF-8 text (byte {e.start})", jinja) from None
    where, template = directory / "tokenizer_config.json", tcfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template):
            raise broken("chat_template is a list whose entries are not {name, template} objects", where)
        named = {t.get("name"): t["template"] for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise broken(f"chat_template is {shown(template)}, expected a string", where)
    return template, where


def _eos_ids(directory: Path, config: dict[str, Any], vocab_size: int | None) -> list[int]:
    """End-of-sequence ids from generation_config.json, else config.json; each checked."""
    gen_path = directory / "generation_config.json"
    gen = read_json(gen_path) if gen_path.exists() else {}
    for value, where in ((gen.get("eos_token_id"), gen_path), (config.get("eos_token_id"), directory / "config.json")):
        if value is not None:
            ids = value if isinstance(value, list) else [value]
            top = vocab_size - 1 if vocab_size else None
            return [integer(i, "eos_token_id", where, low=0, high=top) for i in ids]
    return []


def _pad_id(config: dict[str, Any], vocab_size: int | None, where: Path) -> int | None:
    value = config.get("pad_token_id")
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
        raise broken(f"pad_token_id is {shown(value)}, expected an integer", where)
    # Some configs say -1 for "none"; like an id past the vocabulary, it means no pad token.
    return value if value is not None and 0 <= value < (vocab_size or value + 1) else None


def from_hf_dir(directory: Path, config: dict[str, Any], *, vocab_size: int | None = None) -> LlamaTokenizer | None:
    """A tokenizer from ``tokenizer.json`` (+ ``tokenizer_config.json``, ``chat_template.jinja``,
    ``generation_config.json``); ``None`` when the directory has no ``tokenizer.json``.
    ``vocab_size`` (the embedding's rows) bounds the special token ids."""
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    if not path.exists():
        log.warning("model.tokenizer.missing", path=str(directory), expected="tokenizer.json")
        return None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type on bad JSON
        raise broken(f"not a valid tokenizer.json ({e})", path) from None
    cfg_path = directory / "tokenizer_config.json"
    tcfg = read_json(cfg_path) if cfg_path.exists() else {}
    bos, eos, pad = (_token_text(tcfg.get(k), k, cfg_path) for k in ("bos_token", "eos_token", "pad_token"))
    template, template_file = _template(directory, tcfg)
    eos_ids = _eos_ids(directory, config, vocab_size)
    if not eos_ids and eos is not None and tok.token_to_id(eos) is not None:
        eos_ids = [tok.token_to_id(eos)]
    if not eos_ids:
        raise ModelLoadError(
            f"{directory}: no end-of-sequence token in generation_config.json, config.json or tokenizer_config.json."
        )
    pad_id = tok.token_to_id(pad) if pad else _pad_id(config, vocab_size, directory / "config.json")
    return LlamaTokenizer(
        tok, eos_token_ids=eos_ids, pad_token_id=pad_id, bos_token=bos, eos_token=eos,
        chat_template=ChatTemplate(template, source=str(template_file)) if template else None, source=str(directory),
    )  # fmt: skip
