"""Pin the process to Keras 2 (tf-keras) before TensorFlow is imported.

Keras 3 has no ParameterServerStrategy support (keras-team/keras#18624), so
every entry point of ps_sync imports this module first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class KerasVersionError(RuntimeError):
    pass


def check_keras():
    """Raise KerasVersionError unless `tf.keras` resolves to tf-keras 2.x."""
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        raise KerasVersionError(
            "TF_USE_LEGACY_KERAS is set to %r; ps_sync needs it to be '1' so "
            "that tf.keras is tf-keras (Keras 2). Keras 3 cannot train under "
            "ParameterServerStrategy." % os.environ.get("TF_USE_LEGACY_KERAS"))
    import tensorflow as tf
    module = tf.keras.Model.__module__
    if not module.startswith("tf_keras"):
        raise KerasVersionError(
            "tf.keras resolves to %r, but ps_sync needs tf-keras 2.x: Keras 3 "
            "cannot train under ParameterServerStrategy. Install "
            "'tf-keras==2.21.*' and set TF_USE_LEGACY_KERAS=1 before "
            "TensorFlow is first imported (importing ps_sync first does it)."
            % module)
    import tf_keras
    return tf_keras.__version__
