"""resfcn256 matches the official checkpoint by name and computes what PRN computes.

The real ``.data`` file is unavailable, so a TF1-format checkpoint with the official names
and random values is written, loaded by name, and the network's output is compared with an
independent numpy implementation of PRN's graph (TF 'SAME' padding worked out by hand).
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from realtime_prn.network import resfcn256 as R  # noqa: E402
from realtime_prn.paths import data_file  # noqa: E402


def test_official_index_maps_one_to_one():
    prefix = str(data_file("prn", "256_256_resfcn256_weight.index"))[: -len(".index")]
    listed = {n: tuple(s) for n, s in tf.train.list_variables(prefix)
              if "Adam" not in n and "power" not in n}
    assert len(listed) == 245
    assert sum(int(np.prod(s)) for s in listed.values()) == 13_365_508
    model = R.build_resfcn256()
    mapping = R.official_variable_map(model)
    assert set(mapping) == set(listed)
    assert {n: tuple(v.shape) for n, v in mapping.items()} == listed
    assert model.count_params() == 13_365_508
    assert R.expected_variables() == listed


def _random_weights(rng):
    w = {}
    for name, shape in R.expected_variables().items():
        if name.endswith("moving_variance"):
            w[name] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("gamma"):
            w[name] = rng.uniform(0.8, 1.2, shape)
        elif name.endswith(("beta", "moving_mean")):
            w[name] = rng.normal(0, 0.1, shape)
        else:
            fan_in = np.prod(shape[:2]) * (shape[3] if "transpose" in name else shape[2])
            w[name] = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _write_tf1_checkpoint(weights, prefix):
    graph = tf.Graph()
    with graph.as_default():
        for name, value in weights.items():
            tf.compat.v1.Variable(value, name=name)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)


def _same_pad(k, s):
    return max(k - s, 0) // 2


def _conv(x, w, s):
    """TF 'SAME' conv2d by explicit taps: out[i] = Σ x[i·s + t − p] · w[t]."""
    k = w.shape[0]
    p = _same_pad(k, s) if k > 1 else 0
    h = x.shape[0]
    oh = -(-h // s)
    total = max((oh - 1) * s + k - h, 0)
    p = total // 2
    xp = np.pad(x, ((p, total - p), (p, total - p), (0, 0)))
    out = np.zeros((oh, oh, w.shape[3]), np.float64)
    for ky in range(k):
        for kx in range(k):
            patch = xp[ky:ky + (oh - 1) * s + 1:s, kx:kx + (oh - 1) * s + 1:s]
            out += patch @ w[ky, kx]
    return out


def _deconv(x, w, s):
    """TF 'SAME' conv2d_transpose (output = input · s) by scattering each kernel tap."""
    k = w.shape[0]
    h = x.shape[0]
    oh = h * s
    p = max((h - 1) * s + k - oh, 0) // 2
    big = np.zeros((oh + 2 * k, oh + 2 * k, w.shape[2]), np.float64)
    for ky in range(k):
        for kx in range(k):
            contrib = x @ w[ky, kx].T  # w: [k, k, out, in]
            big[k + ky - p:k + ky - p + (h - 1) * s + 1:s,
                k + kx - p:k + kx - p + (h - 1) * s + 1:s] += contrib
    return big[k:k + oh, k:k + oh]


def _bn(x, w, scope):
    g, b = w[scope + "/BatchNorm/gamma"], w[scope + "/BatchNorm/beta"]
    m, v = w[scope + "/BatchNorm/moving_mean"], w[scope + "/BatchNorm/moving_variance"]
    return (x - m) / np.sqrt(v + 1e-3) * g + b


def _reference(x, w):
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    n = "resfcn256"
    y = relu(_bn(_conv(x, w[f"{n}/Conv/weights"], 1), w, f"{n}/Conv"))
    for scope, _, stride in R.RES_BLOCKS:
        s = f"{n}/{scope}"
        sc = _conv(y, w[s + "/shortcut/weights"], stride) if s + "/shortcut/weights" in w else y
        z = relu(_bn(_conv(y, w[s + "/Conv/weights"], 1), w, s + "/Conv"))
        z = relu(_bn(_conv(z, w[s + "/Conv_1/weights"], stride), w, s + "/Conv_1"))
        z = _conv(z, w[s + "/Conv_2/weights"], 1)
        y = relu(_bn(z + sc, w, s))
    for i, (_, stride) in enumerate(R.DECODER):
        scope = f"{n}/Conv2d_transpose{'' if i == 0 else f'_{i}'}"
        y = _bn(_deconv(y, w[scope + "/weights"], stride), w, scope)
        y = 1 / (1 + np.exp(-y)) if i == len(R.DECODER) - 1 else relu(y)
    return y * 256 * 1.1


def test_tf1_checkpoint_loads_by_name_and_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    weights = _random_weights(rng)
    prefix = str(tmp_path / "256_256_resfcn256_weight")
    _write_tf1_checkpoint(weights, prefix)
    model = R.build_resfcn256(input_size=64)  # fully convolutional: a small input keeps numpy fast
    assert R.load_official_checkpoint(model, prefix) == 13_365_508
    x = rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    got = model(x, training=False).numpy()[0]
    ref = _reference(x[0].astype(np.float64), weights)
    assert got.shape == (64, 64, 3)
    assert ref.std() > 1.0  # random weights still give a non-constant map to compare
    np.testing.assert_allclose(got, ref, atol=2e-2, rtol=1e-3)


def test_wrong_checkpoint_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    weights = _random_weights(rng)
    name = "resfcn256/Conv/weights"
    weights[name] = rng.normal(size=(3, 3, 3, 16)).astype(np.float32)
    prefix = str(tmp_path / "bad")
    _write_tf1_checkpoint(weights, prefix)
    model = R.build_resfcn256(input_size=64)
    before = model.get_weights()[0].copy()
    with pytest.raises(R.CheckpointError, match="shape"):
        R.load_official_checkpoint(model, prefix)
    np.testing.assert_array_equal(model.get_weights()[0], before)  # nothing half-loaded


def test_truncated_checkpoint_is_refused(tmp_path):
    weights = _random_weights(np.random.default_rng(2))
    prefix = str(tmp_path / "trunc")
    _write_tf1_checkpoint(weights, prefix)
    data = tmp_path / "trunc.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: 1000])
    with pytest.raises(R.CheckpointError):
        R.load_official_checkpoint(R.build_resfcn256(input_size=64), prefix)


def test_deconv_as_conv_rewrite_is_exact():
    rng = np.random.default_rng(3)
    model = R.build_resfcn256(input_size=64)
    for var in model.weights:
        if "moving_variance" in var.path or "gamma" in var.path:
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype(np.float32))
        else:
            var.assign(rng.normal(0, 0.1, var.shape).astype(np.float32))
    rewritten = R.build_resfcn256(input_size=64, deconv_as_conv=True)
    R.copy_to_deconv_as_conv(model, rewritten)
    assert not any(type(layer).__name__ == "Conv2DTranspose" for layer in rewritten.layers)
    x = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    a = model(x, training=False).numpy()
    b = rewritten(x, training=False).numpy()
    assert a.std() > 1.0
    np.testing.assert_allclose(b, a, atol=1e-3, rtol=1e-4)


def test_checkpoint_to_onnx_parity(tmp_path, monkeypatch):
    """Official-format checkpoint → rewritten ONNX → ONNX Runtime, against the TF engine."""
    monkeypatch.setenv("REALTIME_PRN_ENGINES", str(tmp_path / "engines"))
    weights = _random_weights(np.random.default_rng(4))
    prefix = str(tmp_path / "256_256_resfcn256_weight")
    _write_tf1_checkpoint(weights, prefix)
    from realtime_prn.engines import create_engine
    x = np.random.default_rng(5).uniform(0, 1, (2, 256, 256, 3)).astype(np.float32)
    ref = create_engine("tensorflow", weights=prefix).infer(x)
    got = create_engine("onnxruntime", weights=prefix, log=lambda *_: None).infer(x)
    err = np.abs(ref - got)
    print(f"resfcn256 TF vs ONNX Runtime fp32 (deconv rewritten): max {err.max():.5f} px")
    assert err.max() < 0.05
