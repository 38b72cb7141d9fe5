"""Model metadata, and the errors of loading and compiling."""

import pytest

import fff
from conftest import ONNX, load_inputs


def test_inputs_and_outputs(model):
    assert model.inputs == [
        {"name": name, "dtype": "int64", "shape": ["batch", "seq"]}
        for name in ["input_ids", "attention_mask", "token_type_ids"]
    ]
    # Sizes the compiler could not tie to an input's are None (bert-tiny's position ids are a sliced
    # constant, so its shape inference loses the batch and sequence names).
    assert model.outputs == [
        {"name": "last_hidden_state", "dtype": "float32", "shape": [None, None, 64]},
        {"name": "pooler_output", "dtype": "float32", "shape": [None, 64]},
    ]


def test_threads(plan):
    assert fff.Model(plan, threads=1).threads == 1
    assert fff.Model(plan, threads=2).threads == 2
    assert fff.Model(plan).threads >= 1  # one per core
    with pytest.raises(fff.Error, match="^2000 threads asked for; a model runs on at most 1024$"):
        fff.Model(plan, threads=2000)


def test_repr_names_the_plan(plan):
    assert repr(fff.Model(plan, threads=1)) == f"fff.Model({str(plan)!r}, threads=1)"


def test_a_missing_plan(tmp_path):
    path = tmp_path / "missing.fff"
    with pytest.raises(fff.Error) as e:
        fff.Model(path)
    assert str(e.value) == f"cannot open {path}: No such file or directory (os error 2)"


def test_corrupt_plans(tmp_path, plan):
    garbage = tmp_path / "garbage.fff"
    garbage.write_bytes(b"not a plan at all, just some bytes" * 10)
    with pytest.raises(fff.Error, match="^invalid plan: "):
        fff.Model(garbage)
    truncated = tmp_path / "truncated.fff"
    truncated.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    with pytest.raises(fff.Error, match="^invalid plan: "):
        fff.Model(truncated)


def test_run_errors_are_the_runtimes(model):
    inputs = load_inputs()
    del inputs["token_type_ids"]
    with pytest.raises(fff.Error, match=r"^invalid input: missing input 'token_type_ids' \(int64 \[batch, seq\]\)$"):
        model.run(inputs)
    with pytest.raises(fff.Error, match="unknown input 'extra'"):
        model.run({**load_inputs(), "extra": load_inputs()["input_ids"]})
    with pytest.raises(TypeError):
        model.run([("input_ids", load_inputs()["input_ids"])])


def test_compile_errors(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(fff.Error) as e:
        fff.compile(missing, tmp_path / "out.fff")
    assert str(e.value) == f"cannot read {missing}: No such file or directory (os error 2)"
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"\x01\x02\x03 not protobuf")
    with pytest.raises(fff.Error, match="^not a valid ONNX model: "):
        fff.compile(not_onnx, tmp_path / "out.fff")
    with pytest.raises(fff.Error, match="unknown quantize 'int4'"):
        fff.compile(ONNX, tmp_path / "out.fff", quantize="int4")
    with pytest.raises(fff.Error, match="give a tokenizer too"):
        fff.compile(ONNX, tmp_path / "out.fff", pooling="mean")
    with pytest.raises(fff.Error, match="^tokenizer: |^cannot read "):
        fff.compile(ONNX, tmp_path / "out.fff", tokenizer=tmp_path / "no-tokenizer.json")
    assert not (tmp_path / "out.fff").exists()
