"""The model zoo: names, shapes, parameter counts, losses, and training."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from models import digits, inception_v3, losses, registry

# Keras' InceptionV3 (weights=None, 1000 classes) has exactly the slim
# architecture without the auxiliary head: 23,851,784 parameters. The head
# adds 1x1x768x128 + BN(128: beta, mean, var) + 5x5x128x768 + BN(768)
# + 768x1000 + 1000.
KERAS_INCEPTION_V3_PARAMS = 23851784
AUX_HEAD_PARAMS = (768 * 128 + 3 * 128) + (25 * 128 * 768 + 3 * 768) + (
    768 * 1000 + 1000)


def test_names_and_unknown_model():
    assert registry.names() == ["inception_v3", "inception_v3_small",
                                "small_cnn"]
    with pytest.raises(ValueError, match="unknown model 'resnet'.*small_cnn"):
        registry.build_model("resnet", 10)


def test_recipe_is_paper_era():
    for name in ("inception_v3", "inception_v3_small"):
        spec = registry.get_spec(name)
        assert (spec.label_smoothing, spec.aux_loss_weight) == (0.1, 0.4)
        loss, weights = registry.loss_and_weights(name)
        assert weights == {"logits": 1.0, "aux_logits": 0.4}
        assert loss["logits"].label_smoothing == 0.1
    spec = registry.get_spec("small_cnn")
    assert (spec.label_smoothing, spec.aux_loss_weight) == (0.0, None)
    assert registry.get_spec("inception_v3").input_shape == (299, 299, 3)


def test_sparse_smoothed_crossentropy_matches_one_hot_keras_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 4, 2, 2, 1, 3])
    for smoothing in (0.0, 0.1):
        ours = losses.SparseSmoothedCrossentropy(smoothing)(labels, logits)
        keras = tf.keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=smoothing)(
                tf.one_hot(labels, 5), logits)
        np.testing.assert_allclose(ours.numpy(), keras.numpy(), rtol=1e-6)
    # By hand for one example: target 0.9 * one_hot + 0.1 / 5.
    log_p = logits[0] - np.log(np.exp(logits[0]).sum())
    target = np.full(5, 0.02)
    target[0] += 0.9
    ours = losses.SparseSmoothedCrossentropy(0.1)(labels[:1], logits[:1])
    np.testing.assert_allclose(ours.numpy(), -(target * log_p).sum(),
                               rtol=1e-5)
    assert losses.SparseSmoothedCrossentropy(0.1).get_config()[
        "label_smoothing"] == 0.1


def test_small_cnn_reaches_095_on_digits():
    tf.keras.utils.set_random_seed(0)
    model = registry.build_model("small_cnn", digits.NUM_CLASSES)
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, 8, 8, 1)
    assert 100_000 < model.count_params() < 200_000
    model.compile(tf.keras.optimizers.SGD(0.1, momentum=0.9),
                  **registry.compile_kwargs("small_cnn"))
    model.fit(digits.train_dataset(32, seed=0), steps_per_epoch=300,
              epochs=1, verbose=0)
    result = model.evaluate(digits.eval_dataset(360), verbose=0,
                            return_dict=True)
    assert result["top1"] >= 0.95, result
    assert result["top5"] >= result["top1"]


def test_inception_v3_full_size_structure():
    model = registry.build_model("inception_v3", 1000)
    assert model.input_shape == (None, 299, 299, 3)
    assert model.output_names == ["logits", "aux_logits"]
    assert [tuple(s) for s in model.output_shape] == [(None, 1000),
                                                      (None, 1000)]
    # Grid sizes and depths of the paper's table 1 (35/17/8 grids).
    shapes = {name: model.get_layer(name).output_shape[1:] for name in
              ("Conv2d_4a_3x3/relu", "Mixed_5b", "Mixed_5d", "Mixed_6a",
               "Mixed_6e", "Mixed_7a", "Mixed_7c")}
    assert shapes == {
        "Conv2d_4a_3x3/relu": (71, 71, 192),
        "Mixed_5b": (35, 35, 256), "Mixed_5d": (35, 35, 288),
        "Mixed_6a": (17, 17, 768), "Mixed_6e": (17, 17, 768),
        "Mixed_7a": (8, 8, 1280), "Mixed_7c": (8, 8, 2048)}
    assert model.count_params() == KERAS_INCEPTION_V3_PARAMS + AUX_HEAD_PARAMS
    assert model.get_layer("aux/5x5").kernel_size == (5, 5)
    # Weight decay on every conv kernel (slim's 4e-5 = Keras' 2e-5).
    convs = [l for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)]
    # 94 conv+BN in the trunk (as Keras' InceptionV3), 2 in the auxiliary
    # head, 2 logits layers.
    assert len(convs) == 98
    assert all(abs(float(l.kernel_regularizer.l2) - 2e-5) < 1e-12
               for l in convs)
    bns = [l for l in model.layers
           if isinstance(l, tf.keras.layers.BatchNormalization)]
    assert all(l.momentum == 0.9997 and not l.scale for l in bns)

    logits, aux = model(np.zeros((1, 299, 299, 3), np.float32),
                        training=False)
    assert logits.shape == (1, 1000) and aux.shape == (1, 1000)
    assert np.all(np.isfinite(logits.numpy()))


def test_inception_v3_without_aux_matches_keras_applications_size():
    model = inception_v3.build(1000, aux_logits=False)
    assert model.output_shape == (None, 1000)
    assert model.count_params() == KERAS_INCEPTION_V3_PARAMS


def test_inception_v3_rejects_tiny_inputs():
    with pytest.raises(ValueError, match="at least 75x75"):
        registry.build_model("inception_v3_small", 10, input_shape=(64, 64, 3))


def test_inception_v3_small_trains_and_loss_is_main_plus_0_4_aux():
    tf.keras.utils.set_random_seed(0)
    name = "inception_v3_small"
    model = registry.build_model(name, 10)
    assert model.input_shape == (None, 75, 75, 3)
    assert [tuple(s) for s in model.output_shape] == [(None, 10), (None, 10)]
    # A quarter of the filters: Mixed_7c has 2048 / 4 channels.
    assert model.get_layer("Mixed_7c").output_shape[-1] == 512
    assert 1_000_000 < model.count_params() < 3_000_000
    model.compile(tf.keras.optimizers.Adam(1e-3),
                  **registry.compile_kwargs(name))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 75, 75, 3)).astype(np.float32)
    y = np.arange(8) % 10

    before = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    # The compiled loss is main + 0.4 * aux + weight decay.
    logits, aux = model(x, training=False)
    smoothed = losses.SparseSmoothedCrossentropy(0.1)
    expected = (smoothed(y, logits) + 0.4 * smoothed(y, aux)
                + tf.add_n(model.losses))
    np.testing.assert_allclose(before["loss"], expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(before["logits_loss"],
                               smoothed(y, logits).numpy(), rtol=1e-4)

    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert history["logits_loss"][-1] < history["logits_loss"][0]
