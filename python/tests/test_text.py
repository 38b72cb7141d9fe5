"""Model.embed and Model.tokenize: pooling checked against NumPy arithmetic on Model.run's token
vectors, tokens against the `tokenizers` package."""

import numpy as np
import pytest

import fff
from conftest import LONG_TEXT, ONNX, TEXTS

WIDTH = 64


def token_vectors(model, texts):
    """bert-tiny's token vectors for `texts` and the attention mask, through tokenize and run."""
    inputs = model.tokenize(texts)
    out = model.run(inputs)
    return out["last_hidden_state"].astype(np.float64), inputs["attention_mask"]


def numpy_pooling(tokens, mask, pooling):
    kept = mask[..., None] != 0
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return (tokens * kept).sum(axis=1) / np.maximum(kept.sum(axis=1), 1e-9)
    if pooling == "max":
        return np.where(kept, tokens, -np.inf).max(axis=1)
    raise ValueError(pooling)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_pooling_matches_numpy_on_the_token_vectors(text_model, pooling):
    texts = TEXTS + [LONG_TEXT]
    vectors = text_model.embed(texts, pooling=pooling)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(texts), WIDTH)
    tokens, mask = token_vectors(text_model, texts)
    np.testing.assert_allclose(vectors, numpy_pooling(tokens, mask, pooling), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_normalised_vectors_have_norm_one_and_the_pooled_direction(text_model, pooling):
    vectors = text_model.embed(TEXTS, pooling=pooling, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)
    tokens, mask = token_vectors(text_model, TEXTS)
    pooled = numpy_pooling(tokens, mask, pooling)
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)


def test_utf8_bytes_embed_as_their_text(text_model):
    as_str = text_model.embed(TEXTS, pooling="mean")
    as_bytes = text_model.embed([t.encode() for t in TEXTS], pooling="mean")
    np.testing.assert_array_equal(as_str, as_bytes)


def test_plan_defaults_apply_when_the_call_names_none(tmp_path, tokenizer_path, text_model):
    path = tmp_path / "defaults.fff"
    fff.compile(ONNX, path, tokenizer=tokenizer_path, pooling="mean", normalize=True, max_length=16)
    m = fff.Model(path)
    assert m.text["pooling"] == "mean"
    assert m.text["normalize"] is True
    assert m.text["max_length"] == 16
    np.testing.assert_array_equal(
        m.embed(TEXTS), text_model.embed(TEXTS, pooling="mean", normalize=True, max_length=16)
    )
    assert m.tokenize([LONG_TEXT])["input_ids"].shape == (1, 16)


def test_max_length_truncates_and_is_bounded_by_the_model(text_model):
    ids = text_model.tokenize([LONG_TEXT, "a"], max_length=8)["input_ids"]
    assert ids.shape == (2, 8)
    assert text_model.embed([LONG_TEXT], pooling="cls", max_length=8).shape == (1, WIDTH)
    with pytest.raises(fff.Error, match="more than the model's 64 positions"):
        text_model.embed(["a"], pooling="cls", max_length=65)


def test_tokenize_gives_the_model_inputs(text_model):
    inputs = text_model.tokenize(TEXTS)
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for a in inputs.values():
        assert a.dtype == np.int64
        assert a.shape == inputs["input_ids"].shape
    assert inputs["input_ids"].shape[0] == len(TEXTS)
    # Padded on the right to the longest text: every row starts with a real token.
    assert np.all(inputs["attention_mask"][:, 0] == 1)
    assert np.any(inputs["attention_mask"] == 0)


def test_tokenize_matches_the_tokenizers_package(text_model, tokenizer_path):
    tokenizers = pytest.importorskip("tokenizers")
    texts = TEXTS + [LONG_TEXT]
    reference = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    reference.enable_truncation(max_length=text_model.text["max_length"])
    reference.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = reference.encode_batch(texts)
    ours = text_model.tokenize(texts)
    np.testing.assert_array_equal(ours["input_ids"], [e.ids for e in encodings])
    np.testing.assert_array_equal(ours["attention_mask"], [e.attention_mask for e in encodings])
    np.testing.assert_array_equal(ours["token_type_ids"], [e.type_ids for e in encodings])
    assert ours["input_ids"].shape[1] == 64  # the long text was cut to the model's limit


def test_text_metadata(text_model, model):
    assert model.text is None
    text = text_model.text
    assert text["max_length"] == 64
    assert text["model_limit"] == 64
    assert text["pooling"] is None
    assert text["normalize"] is False
    assert text["roles"] == {
        "ids": "input_ids",
        "mask": "attention_mask",
        "type_ids": "token_type_ids",
        "positions": None,
    }
    assert text["source"].endswith("tokenizer.json")


def test_embed_errors(text_model, model):
    with pytest.raises(fff.Error, match="^invalid input: no texts were given$"):
        text_model.embed([], pooling="mean")
    with pytest.raises(fff.Error, match="this plan has no tokenizer"):
        model.embed(["a"], pooling="mean")
    with pytest.raises(fff.Error, match="^unknown pooling 'avg'; expected one of cls, mean, max, none$"):
        text_model.embed(["a"], pooling="avg")
    with pytest.raises(fff.Error, match="text 1 is not valid UTF-8"):
        text_model.embed([b"fine", b"\xff\xfe"], pooling="mean")
    with pytest.raises(fff.Error, match="no pooling was asked for"):
        text_model.embed(["a"])
    with pytest.raises(TypeError):
        text_model.embed("one text", pooling="mean")
    with pytest.raises(TypeError):
        text_model.embed(["a", 1], pooling="mean")
