"""wgrad's own tools from Python: gradcheck reports, custom WGSL layer checks, checkpoints
(safetensors) and adapters."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import wgrad
from wgrad import book

import book_numpy as ref
from checks import assert_grads_close, assert_rel

# PReLU with one slope per feature, and the same layer with the sign of the slope's gradient
# flipped: the Rust suite's own layer files (tests/custom_layers.rs checks them too).
LAYERS = Path(__file__).resolve().parents[2] / "tests" / "layers"
PRELU_PATH = LAYERS / "prelu.wgsl"
PRELU = PRELU_PATH.read_text()
PRELU_WRONG = (LAYERS / "prelu_wrong.wgsl").read_text()

TENSOR_KEYS = {"name", "numel", "mean_abs_diff", "max_rel_err", "max_rel_err_at",
               "norm_rel_err", "passed"}


def rows(report):
    return {row["name"]: row for row in report["tensors"]}


# ---- gradcheck ----------------------------------------------------------------------------------

def test_gradcheck_two_layer_net(mnist):
    np.random.seed(4)
    net = book.TwoLayerNet(784, 50, 10)
    x, t = mnist["x_train"][:3], mnist["t_train"][:3]
    report = wgrad.gradcheck(net, x, t, precision="f64")
    assert isinstance(report, dict)
    json.dumps(report)  # plain JSON types, as `wgrad gradcheck --json`
    assert report["passed"] is True
    assert report["batch"] == 3
    assert [row["name"] for row in report["tensors"]] == ["W1", "b1", "W2", "b2"]
    for row in report["tensors"]:
        assert TENSOR_KEYS <= set(row), row
        assert row["passed"] is True
        assert row["numel"] == net.params[row["name"]].size
    # The check holds the backward pass to the loss it is the gradient of, log-softmax's
    # cross-entropy (the book's backward drops the 1e-7 of its loss).
    np.random.seed(4)
    rf = ref.TwoLayerNet(784, 50, 10)
    z = rf.predict(x)
    top = z.max(axis=1)
    log_softmax = np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[np.arange(3), t])
    assert_rel(report["loss"], log_softmax)


def test_gradcheck_conv_and_batchnorm_nets(mnist):
    x, t = mnist["x_train"][:4], mnist["t_train"][:4]
    np.random.seed(6)
    ext = book.MultiLayerNetExtend(784, [12, 8], 10, use_batchnorm=True)
    report = wgrad.gradcheck(ext, x, t, precision="f64")
    assert report["passed"] is True
    assert set(rows(report)) == set(ext.params)
    np.random.seed(6)
    conv = book.SimpleConvNet(conv_param={"filter_num": 2, "filter_size": 5, "pad": 0,
                                          "stride": 1}, hidden_size=6)
    report = wgrad.gradcheck(conv, x, t, precision="f64")
    assert report["passed"] is True
    assert [row["name"] for row in report["tensors"]] == ["W1", "b1", "W2", "b2", "W3", "b3"]


# ---- check_layer --------------------------------------------------------------------------------

def test_check_layer_correct_layer_passes():
    report = wgrad.check_layer(PRELU, (6,))
    assert report["passed"] is True
    assert [row["name"] for row in report["tensors"]] == ["alpha1", "x1"]
    assert all(row["passed"] for row in report["tensors"])


def test_check_layer_from_a_path():
    report = wgrad.check_layer(str(PRELU_PATH), (2, 3, 3))
    assert report["passed"] is True
    assert rows(report)["alpha1"]["numel"] == 18


def test_check_layer_sign_flipped_backward_fails():
    report = wgrad.check_layer(PRELU_WRONG, (6,))
    assert report["passed"] is False
    bad = rows(report)
    assert bad["alpha1"]["passed"] is False
    assert bad["alpha1"]["max_rel_err"] > 1e-2
    assert bad["x1"]["passed"] is True  # dx is right; only the slope's gradient is broken


def test_check_layer_broken_contract_raises():
    with pytest.raises(Exception) as info:
        wgrad.check_layer(PRELU.replace("fn backward(n: u32", "fn backwards(n: u32"), (6,))
    assert "backward" in str(info.value)


# ---- checkpoints --------------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata):
    """A safetensors file (8-byte little-endian header length, JSON header, raw data): F32."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_load_a_wgrad_checkpoint(tmp_path):
    spec = {"image": [1, 1, 20], "input": 20, "output": 4, "weight_decay": 0.0,
            "layers": [{"type": "affine", "units": 11}, {"type": "relu"},
                       {"type": "affine", "units": 4}]}
    r = np.random.RandomState(3)
    params = {"W1": r.randn(20, 11), "b1": r.randn(11), "W2": r.randn(11, 4), "b2": r.randn(4)}
    # the file holds f32: compare with the f32 values
    params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    path = tmp_path / "net.safetensors"
    write_safetensors(path, params, {"spec": json.dumps(spec), "format": "wgrad-mlp"})

    net = wgrad.load(str(path))
    assert set(net.params) == set(params)
    for k, v in params.items():
        np.testing.assert_array_equal(np.asarray(net.params[k]), v, err_msg=k)
    np.random.seed(0)
    rf = ref.TwoLayerNet(20, 11, 4)
    for k, v in params.items():
        rf.params[k] = v.copy()
    x = r.randn(5, 20)
    t = r.randint(0, 4, size=5)
    assert_rel(net.predict(x), rf.predict(x))
    # A checkpoint of `wgrad train` keeps its PyTorch conventions: log-softmax cross-entropy,
    # not the book's -log(y + 1e-7) (these large weights make the two differ by far).
    z = rf.predict(x)
    top = z.max(axis=1)
    log_softmax_loss = np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[np.arange(5), t])
    assert_rel(net.loss(x, t), log_softmax_loss)
    assert abs(rf.loss(x, t) - log_softmax_loss) > 1e-3
    assert net.accuracy(x, t) == rf.accuracy(x, t)
    assert_grads_close(net.gradient(x, t), rf.gradient(x, t))


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(Exception):
        wgrad.load(str(tmp_path / "nothing.safetensors"))


# ---- devices ------------------------------------------------------------------------------------

def test_devices():
    devices = wgrad.devices()
    assert len(devices) >= 1
    for d in devices:
        assert {"name", "backend", "f64"} <= set(d), d
        assert isinstance(d["name"], str) and isinstance(d["f64"], bool)
    assert any(d["f64"] for d in devices), devices  # the f64 tests need one


def test_nets_compute_in_f64_where_the_adapter_has_it_and_in_what_is_asked_for():
    assert book.TwoLayerNet(5, 4, 3).precision == "f64"
    net = wgrad.GpuNet("affine4,relu,affine3", (1, 1, 5), precision="f32")
    assert net.precision == "f32"
