"""A model file's content is not trusted: every way a field can be wrong ends in one
``ModelLoadError`` reading ``model file is broken: <what>, in <where>. <what to do>``,
raised before any tensor is read or anything sized by the file is built. One row per case:
GGUF header and metadata, Hugging Face files; a few rows through the real command (the
chat-template bounds have their own table in test_chat_template_bounds.py)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import gguf_bytes as gb
import pytest
from badinput import check, run
from gguf_bytes import ARRAY, FLOAT32, INT32, STRING, UINT32, UINT64

from plugstack import ModelLoadError
from plugstack.plugins.llama.loader import load_path


@pytest.fixture
def tiny_gguf(tiny_gguf_file) -> Path:
    return tiny_gguf_file


@pytest.fixture
def nothing_read(monkeypatch):
    """Fail if a tensor is read or the module built: every check comes before those."""
    from plugstack.plugins.llama import gguf_loader, hf_loader, loader

    def refuse(*args, **kwargs):
        raise AssertionError("tensors were read or the module built before the file was checked")

    monkeypatch.setattr(gguf_loader.GGUFContents, "load_state_dict", refuse)
    monkeypatch.setattr(hf_loader, "load_hf_state_dict", refuse)
    monkeypatch.setattr(loader, "_build_module", refuse)


def _assert_broken(error: ModelLoadError, where: Path) -> None:
    text = str(error)
    assert text.startswith("model file is broken: "), text
    assert str(where) in text and "point model.path at another model" in text, text


# -- GGUF -----------------------------------------------------------------------------------


def _tensor(which: str, **fields):
    def mutate(g):
        for k, v in fields.items():
            setattr(g.tensor(which), k, v)

    return mutate


def _nested(depth: int):
    value = (0, [1])  # innermost: an array of one uint8
    for _ in range(depth):
        value = (ARRAY, [value])
    return lambda g: g.set("general.nested", ARRAY, value)


def _rename(old: str, new: str):
    return _tensor(old, name=new)


GGUF_CASES = [
    ("block_count-string", lambda g: g.set("llama.block_count", STRING, "abc"),
     r"llama\.block_count is 'abc', expected a positive integer"),
    ("block_count-zero", lambda g: g.set("llama.block_count", UINT32, 0),
     r"llama\.block_count is 0, expected a positive"),
    ("block_count-huge", lambda g: g.set("llama.block_count", UINT32, 100000),
     r"llama\.block_count is 100000 but the file holds tensors of 2 blocks"),
    ("block_count-too-few", lambda g: g.set("llama.block_count", UINT32, 1), r"block_count is 1 but .* 2 blocks"),
    ("block-beyond-count", _rename("blk.1.attn_q.weight", "blk.5.attn_q.weight"), r"block_count is 2 but .* 6 blocks"),
    ("head_count_kv-not-dividing", lambda g: g.set("llama.attention.head_count_kv", UINT32, 3),
     r"llama\.attention\.head_count_kv is 3, which does not divide llama\.attention\.head_count \(4\)"),
    ("head_count_kv-zero", lambda g: g.set("llama.attention.head_count_kv", UINT32, 0),
     r"head_count_kv is 0, expected"),
    ("head_count-negative", lambda g: g.set("llama.attention.head_count", INT32, -4),
     r"head_count is -4, expected a pos"),
    ("head_count-list", lambda g: g.set("llama.attention.head_count", ARRAY, (UINT32, [1, 2])),
     r"per-layer query head"),
    ("embedding_length-missing", lambda g: g.drop("llama.embedding_length"),
     r"metadata key llama\.embedding_length is missing"),
    ("embedding_length-vs-tensors", lambda g: g.set("llama.embedding_length", UINT32, 128),
     r"tensor 'token_embd\.weight' has shape \[128, 64\], expected \[128, 128\]"),
    ("feed_forward-float", lambda g: g.set("llama.feed_forward_length", FLOAT32, 128.0),
     r"llama\.feed_forward_length is 128\.0, expected a positive integer"),
    ("key_length-odd", lambda g: g.set("llama.attention.key_length", UINT32, 15),
     r"the head size \(llama\.attention\.key_length\) is 15, expected an even number"),
    ("freq_base-nan", lambda g: g.set("llama.rope.freq_base", FLOAT32, float("nan")),
     r"llama\.rope\.freq_base is nan, expected a finite number above 0"),
    ("rms_eps-negative", lambda g: g.set("llama.attention.layer_norm_rms_epsilon", FLOAT32, -1.0),
     r"layer_norm_rms_epsilon is -1\.0, expected a finite number of at least 0 below 1"),
    ("context_length-huge", lambda g: g.set("llama.context_length", UINT64, 1 << 40),
     r"llama\.context_length is 1099511627776, expected a positive integer up to 16777216"),
    ("alignment-zero", lambda g: g.set("general.alignment", UINT32, 0),
     r"general\.alignment is 0, expected a power of two"),
    ("alignment-odd", lambda g: g.set("general.alignment", UINT32, 24), r"general\.alignment is 24, expected a power"),
    ("architecture-number", lambda g: g.set("general.architecture", UINT32, 5),
     r"general\.architecture is 5, expected a str"),
    ("architecture-missing", lambda g: g.drop("general.architecture"), r"general\.architecture is missing"),
    ("nested-arrays", _nested(50), r"metadata key 'general\.nested' nests arrays more than 4 deep"),
    ("unknown-value-type", lambda g: g.extra_kvs.append(("general.odd", 13, b"\0" * 8)),
     r"'general\.odd' has value type 13"),
    ("array-count-huge", lambda g: g.set("general.list", ARRAY, struct.pack("<IQ", UINT32, 1 << 60)),
     r"'general\.list' claims an array of 1152921504606846976 items"),
    ("kv-count-huge", lambda g: setattr(g, "n_kv", 1 << 40), r"the header claims 1099511627776 metadata keys"),
    ("duplicate-key", lambda g: g.extra_kvs.append(("llama.block_count", UINT32, 2)),
     r"'llama\.block_count' appears twice"),
    ("merge-without-space", lambda g: g.set("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "abc"])),
     r"tokenizer\.ggml\.merges\[1\] is 'abc', expected two tokens separated by a space"),
    ("merge-outside-vocab", lambda g: g.set("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "ab \u4e00"])),
     r"tokenizer\.ggml\.merges do not fit tokenizer\.ggml\.tokens"),
    ("tokens-not-strings", lambda g: g.set("tokenizer.ggml.tokens", ARRAY, (UINT32, list(range(128)))),
     r"tokenizer\.ggml\.tokens is a list of 128 items, expected a non-empty list of strings"),
    ("token_type-length", lambda g: g.set("tokenizer.ggml.token_type", ARRAY, (INT32, [1, 1, 1])),
     r"tokenizer\.ggml\.token_type has 3 entries for 128 tokens"),
    ("eos-string", lambda g: g.set("tokenizer.ggml.eos_token_id", STRING, "x"),
     r"tokenizer\.ggml\.eos_token_id is 'x', expected a non-negative integer"),
    ("eos-outside-vocab", lambda g: g.set("tokenizer.ggml.eos_token_id", UINT32, 999),
     r"tokenizer\.ggml\.eos_token_id is missing or outside the vocabulary of 128 tokens"),
    ("add_bos-string", lambda g: g.set("tokenizer.ggml.add_bos_token", STRING, "yes"),
     r"tokenizer\.ggml\.add_bos_token is 'yes', expected true or false"),
    ("tokenizer-model-missing", lambda g: g.drop("tokenizer.ggml.model"), r"tokenizer\.ggml\.model is missing"),
    ("chat_template-number", lambda g: g.set("tokenizer.chat_template", UINT32, 7),
     r"tokenizer\.chat_template is 7, expected a string"),
    ("chat_template-syntax", lambda g: g.set("tokenizer.chat_template", STRING, "{% for m in messages %}"),
     r"its chat template does not compile \(TemplateSyntaxError"),
    ("tensor-5-dims", _tensor("output_norm.weight", dims=[64, 1, 1, 1, 1]), r"'output_norm\.weight' has 5 dimensions"),
    ("tensor-zero-dim", _tensor("output_norm.weight", dims=[0]), r"'output_norm\.weight' has dimensions \[0\]"),
    ("tensor-partial-blocks", _tensor("output_norm.weight", dims=[48], type_id=8),
     r"'output_norm\.weight' has shape \[48\], not a whole number of Q8_0 blocks"),
    ("tensor-offset-past-end", _tensor("output_norm.weight", offset=1 << 30),
     r"'output_norm\.weight' ends at byte \d+ but the file has only \d+ bytes \(truncated\)"),
    ("tensor-offset-unaligned", _tensor("output_norm.weight", offset=4),
     r"starts at offset 4, not a multiple of .* 32"),
    ("tensor-twice", lambda g: g.tensors.append(g.tensors[0]), r"a tensor name appears twice"),
    ("tensor-missing", lambda g: g.tensors.remove(g.tensor("blk.1.ffn_up.weight")),
     r"tensor\(s\) 'blk\.1\.ffn_up\.weight' are missing for a 2-block model"),
    ("tensor-count-lies", lambda g: setattr(g, "n_tensors", len(g.tensors) + 1),
     r"\(truncated\)|tensor name|dimensions"),
]


def _cut(at: int):
    return lambda g: gb.encode(g)[:at]


def _lying_string(g):
    data = gb.encode(g)
    i = data.index(b"general.architecture") - 8  # the key's length field
    return data[:i] + struct.pack("<Q", 1 << 50) + data[i + 8 :]


GGUF_CASES += [
    ("truncated-counts", _cut(300), r"the header claims 17 metadata keys and 20 tensors, more than .* \(truncated"),
    ("truncated-in-tokens", _cut(1500), r"'tokenizer\.ggml\.tokens' claims an array of 128 items, more .* \(truncated"),
    ("truncated-in-tensor-infos", _cut(2900), r"a tensor name of \d+ bytes at byte \d+ runs past the end"),
    ("truncated-in-data", _cut(200_000), r"ends at byte \d+ but the file has only 200000 bytes \(truncated\)"),
    ("string-length-lies", _lying_string, r"a metadata key of 1125899906842624 bytes .* runs past the end"),
]


@pytest.mark.parametrize(("mutate", "says"), [pytest.param(m, s, id=i) for i, m, s in GGUF_CASES])
def test_broken_gguf(mutate, says, tiny_gguf, tmp_path, nothing_read):
    g = gb.read(tiny_gguf)
    out = mutate(g)
    path = tmp_path / "bad.gguf"
    path.write_bytes(out if isinstance(out, bytes) else gb.encode(g))
    with pytest.raises(ModelLoadError, match=says) as e:
        load_path(path)
    if "per-layer" not in says:  # unsupported, not broken: its own message
        _assert_broken(e.value, path)


# -- Hugging Face directories ---------------------------------------------------------------


def _edit_json(name: str, **changes):
    def mutate(d: Path):
        data = json.loads((d / name).read_text()) if (d / name).exists() else {}
        data.update(changes)
        (d / name).write_text(json.dumps(data))

    return mutate


def _write(name: str, content: str | bytes):
    def mutate(d: Path):
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return mutate


def _as_directory(name: str):
    def mutate(d: Path):
        (d / name).unlink(missing_ok=True)
        (d / name).mkdir()

    return mutate


def _index(**edits):
    """A model.safetensors.index.json for the single file, with ``edits`` to its weight_map."""

    def mutate(d: Path):
        from safetensors import safe_open

        with safe_open(str(d / "model.safetensors"), framework="np") as st:
            wm = {k: "model.safetensors" for k in st.keys()}
        shutil.copy(d / "model.safetensors", d.parent / "outside.safetensors")  # exists, and still refused
        wm.update({k.replace("__", "."): v for k, v in edits.items()})
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))

    return mutate


def _st_header(edit):
    """Rewrite model.safetensors with ``edit(header dict) -> header dict | raw bytes``."""

    def mutate(d: Path):
        raw = (d / "model.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        new = edit(json.loads(raw[8 : 8 + n]))
        blob = new if isinstance(new, bytes) else json.dumps(new).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])

    return mutate


def _entry(**fields):
    return _st_header(lambda h: {**h, "model.norm.weight": {**h["model.norm.weight"], **fields}})


_Q = "model__layers__0__self_attn__q_proj__weight"
HF_CASES = [
    ("config-not-json", _write("config.json", "{nope"), "config.json", r"config\.json is not valid JSON"),
    ("config-not-utf8", _write("config.json", b'{"a": "\xff"}'), "config.json", r"config\.json is not UTF-8 text"),
    ("config-a-list", _write("config.json", "[]"), "config.json",
     r"config\.json holds a list of 0 items, expected a JSON"),
    ("config-too-deep", _write("config.json", "[" * 100000 + "]" * 100000), "config.json", r"nests JSON too deeply"),
    ("layers-string", _edit_json("config.json", num_hidden_layers="2"), "config.json",
     r"num_hidden_layers is '2', expected a positive integer"),
    ("layers-huge", _edit_json("config.json", num_hidden_layers=100000), "",
     r"num_hidden_layers is 100000 but the file holds tensors of 2 blocks"),
    ("kv-heads-not-dividing", _edit_json("config.json", num_key_value_heads=3), "config.json",
     r"num_key_value_heads is 3, which does not divide num_attention_heads \(4\)"),
    ("hidden-zero", _edit_json("config.json", hidden_size=0), "config.json", r"hidden_size is 0, expected a positive"),
    ("head_dim-odd", _edit_json("config.json", head_dim=15), "config.json", r"the head size \(head_dim\) is 15"),
    ("vocab-missing", _edit_json("config.json", vocab_size=None), "config.json", r"required key vocab_size is missing"),
    ("rope_theta-string", _edit_json("config.json", rope_parameters={"rope_theta": "big", "rope_type": "default"}),
     "config.json", r"rope_theta is 'big', expected a finite number above 0"),
    ("rope_parameters-string", _edit_json("config.json", rope_parameters="linear"), "config.json",
     r"rope_parameters is 'linear', expected an object or null"),
    ("tie-string", _edit_json("config.json", tie_word_embeddings="yes"), "config.json",
     r"tie_word_embeddings is 'yes', expected true or false"),
    ("max_positions-huge", _edit_json("config.json", max_position_embeddings=10**12), "config.json",
     r"max_position_embeddings is 1000000000000, expected a positive integer up to 16777216"),
    ("pad-string", _edit_json("config.json", pad_token_id="x"), "config.json", r"pad_token_id is 'x', expected an int"),
    ("index-escapes", _index(**{_Q: "../outside.safetensors"}), "model.safetensors.index.json",
     r"weight_map\['model\.layers\.0\.self_attn\.q_proj\.weight'\] names the file '\.\./outside\.safetensors', "
     r"which is not a file inside the model directory"),
    ("index-absolute", _index(**{_Q: "/etc/passwd"}), "model.safetensors.index.json", r"names the file '/etc/passwd'"),
    ("index-not-a-map", _write("model.safetensors.index.json", '{"weight_map": ["model.safetensors"]}'),
     "model.safetensors.index.json", r"weight_map is a list of 1 items, expected an object"),
    ("index-wrong-shard", _index(model__phantom__weight="model.safetensors"), "model.safetensors.index.json",
     r"weight_map puts tensor 'model\.phantom\.weight' in model\.safetensors, which does not hold it"),
    ("st-header-length", lambda d: _write("model.safetensors", struct.pack("<Q", 1 << 62) + b"{}")(d),
     "model.safetensors", r"the header length field says 4611686018427387904 bytes"),
    ("st-header-not-json", _st_header(lambda h: b"{not json" + b" " * 20), "model.safetensors",
     r"the header is not valid JSON"),
    ("st-entry-shape", _entry(shape=["a"]), "model.safetensors",
     r"tensor 'model\.norm\.weight': shape is 'a', expected a non-negative integer"),
    ("st-entry-offsets", _entry(data_offsets=[0, 1 << 40]), "model.safetensors",
     r"'model\.norm\.weight': data_offsets is a list of 2 items, expected \[begin, end\] within the file"),
    ("config-vs-tensors", _edit_json("config.json", hidden_size=32, head_dim=16), "",
     r"tensor 'model\.embed_tokens\.weight' has shape \[320, 64\], expected \[320, 32\]"),
    ("generation-config-a-directory", _as_directory("generation_config.json"), "generation_config.json",
     r"generation_config\.json cannot be read \(Is a directory\)"),
    ("shard-a-directory", _as_directory("model.safetensors"), "model.safetensors",
     r"model\.safetensors cannot be read \(Is a directory\)"),
    ("generation-config-not-json", _write("generation_config.json", "{"), "generation_config.json",
     r"generation_config\.json is not valid JSON"),
    ("generation-config-a-list", _write("generation_config.json", "[1]"), "generation_config.json",
     r"generation_config\.json holds a list of 1 items"),
    ("generation-eos-string", _edit_json("generation_config.json", eos_token_id="x"), "generation_config.json",
     r"eos_token_id is 'x', expected a non-negative integer up to 319"),
    ("generation-eos-outside-vocab", _edit_json("generation_config.json", eos_token_id=[2, 5000]),
     "generation_config.json", r"eos_token_id is 5000, expected a non-negative integer up to 319"),
    ("tokenizer-config-template-number", _edit_json("tokenizer_config.json", chat_template=5), "tokenizer_config.json",
     r"chat_template is 5, expected a string"),
    ("tokenizer-config-template-list", _edit_json("tokenizer_config.json", chat_template=[{"name": 1}]),
     "tokenizer_config.json", r"chat_template is a list whose entries are not \{name, template\} objects"),
    ("tokenizer-config-eos-number", _edit_json("tokenizer_config.json", eos_token={"content": 3}),
     "tokenizer_config.json", r"eos_token is 3, expected a token's text"),
    ("tokenizer-config-not-json", _write("tokenizer_config.json", "\xff"), "tokenizer_config.json",
     r"tokenizer_config\.json is not valid JSON"),
    ("chat-template-jinja-not-utf8", _write("chat_template.jinja", b"{{ bos_token }}\xff\xfe"), "chat_template.jinja",
     r"chat_template\.jinja is not UTF-8 text \(byte 15\)"),
    ("chat-template-jinja-syntax", _write("chat_template.jinja", "{% if %}"), "chat_template.jinja",
     r"its chat template does not compile"),
    ("tokenizer-json-garbage", _write("tokenizer.json", '{"model": 5}'), "tokenizer.json",
     r"not a valid tokenizer\.json"),
]


@pytest.fixture
def hf_copy(tiny_model_dir, tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


@pytest.mark.parametrize(("mutate", "file", "says"), [pytest.param(m, f, s, id=i) for i, m, f, s in HF_CASES])
def test_broken_hf_directory(mutate, file, says, hf_copy, nothing_read):
    mutate(hf_copy)
    with pytest.raises(ModelLoadError, match=says) as e:
        load_path(hf_copy)
    _assert_broken(e.value, hf_copy / file if file else hf_copy)


@pytest.mark.parametrize(("tie", "bias"), [(True, False), (False, True)])
def test_expected_shapes_are_the_modules(tie, bias, tiny_llama_config):
    """The shapes the files are checked against before building are the module's own."""
    from plugstack.plugins.llama.checks import expected_shapes
    from plugstack.plugins.llama.model import Llama, LlamaConfig

    cfg = LlamaConfig(**{**tiny_llama_config.to_dict(), "tie_embeddings": tie, "qkv_bias": bias})
    shapes = {k: tuple(v.shape) for k, v in Llama(cfg).state_dict().items()}
    if tie:
        del shapes["lm_head.weight"]
    assert expected_shapes(cfg.to_dict()) == shapes


# -- through the command line: exit 2, one clear line, no traceback ----------------------------


def _gguf(mutate):
    def build(tmp_path, tiny_gguf, hf_copy):
        g = gb.read(tiny_gguf)
        out = mutate(g)
        path = tmp_path / "bad.gguf"
        path.write_bytes(out if isinstance(out, bytes) else gb.encode(g))
        return path

    return build


def _hf(mutate):
    def build(tmp_path, tiny_gguf, hf_copy):
        mutate(hf_copy)
        return hf_copy

    return build


def _template(text: str):
    return _gguf(lambda g: g.set("tokenizer.chat_template", STRING, text))


CLI_CASES = [
    ("gguf-block_count", _gguf(lambda g: g.set("llama.block_count", STRING, "abc")), ["llama.block_count is 'abc'"]),
    ("gguf-alignment", _gguf(lambda g: g.set("general.alignment", UINT32, 0)), ["general.alignment is 0"]),
    ("gguf-merge", _gguf(lambda g: g.set("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "abc"]))),
     ["tokenizer.ggml.merges[1] is 'abc'"]),
    ("gguf-truncated", _gguf(_cut(200_000)), ["' ends at byte", "but the file has only 200000 bytes (truncated)"]),
    ("template-repeat", _template("{{ 'x' * 2000000000 }}"), ["its chat template would make a repetition"]),
    ("template-range", _template("{% for i in range(100000000) %}x{% endfor %}"),
     ["its chat template would make a width or count of 100000000"]),
    ("hf-index-escape", _hf(_index(**{_Q: "../outside.safetensors"})),
     ["'../outside.safetensors', which is not a file inside the model directory", "model.safetensors.index.json"]),
    ("hf-generation-config", _hf(_write("generation_config.json", "{")), ["generation_config.json is not valid JSON"]),
    ("hf-template-not-utf8", _hf(_write("chat_template.jinja", b"\xff{{ x }}")), ["chat_template.jinja is not UTF-8"]),
    ("hf-kv-heads", _hf(_edit_json("config.json", num_key_value_heads=3)), ["num_key_value_heads is 3"]),
]


@pytest.mark.parametrize(("build", "says"), [pytest.param(b, s, id=i) for i, b, s in CLI_CASES])
def test_broken_model_file_on_the_command_line(build, says, tmp_path, tiny_gguf, hf_copy):
    path = build(tmp_path, tiny_gguf, hf_copy)
    result = run(["app=generate", "backend=cpu", "model=llama", f"model.path={path}", "app.max_new_tokens=2"],
                 env={"PLUGSTACK_OUTPUTS": str(tmp_path), "PLUGSTACK_HOME": str(tmp_path / "home")})  # fmt: skip
    check(result, 2, ["model file is broken", *says, "point model.path at another model"])
