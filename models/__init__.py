"""Model zoo and input pipelines for ps_sync's training program.

    registry      models by name (small_cnn, inception_v3, inception_v3_small)
                  and their loss recipe; small_cnn, inception_v3, losses
    datasets      datasets by name (digits, imagenet2012, imagenet_tfrecord)
    digits        scikit-learn digits, fixed split, per-worker streams
    imagenet      ImageNet from TFRecord shards or TFDS, per-worker streams;
                  inception_preprocessing; imagenet_fixture (tiny test data)
    worker_input  worker index and seeds inside a per-worker dataset_fn

    from models import registry, datasets
    model = registry.build_model("small_cnn", num_classes=10)
    model.compile(optimizer, **registry.compile_kwargs("small_cnn"))
    model.fit(tf.keras.utils.experimental.DatasetCreator(
        datasets.per_worker_dataset_fn("digits", batch_size=32, seed=0)), ...)
"""
from ps_sync import keras_env  # noqa: F401  (must run before TensorFlow loads)
