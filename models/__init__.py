"""Model zoo and input pipelines for ps_sync's training program.

    from models import registry, digits, imagenet
    model = registry.build_model("small_cnn", num_classes=10)
"""
from ps_sync import keras_env  # noqa: F401  (must run before TensorFlow loads)
