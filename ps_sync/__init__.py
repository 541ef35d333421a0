"""ps_sync: synchronous SGD with backup workers on ParameterServerStrategy."""
from ps_sync import keras_env  # noqa: F401  (must run before TensorFlow loads)
