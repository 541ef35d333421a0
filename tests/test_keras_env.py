"""Keras 2 everywhere: importing ps_sync pins tf.keras to tf-keras, and a
process that forced Keras 3 gets a clear error instead of a late failure."""
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _check():
    from ps_sync import keras_env
    try:
        return {"version": keras_env.check_keras()}
    except keras_env.KerasVersionError as e:
        return {"error": str(e)}


def test_importing_ps_sync_gives_tf_keras_2():
    r = fresh_interpreter.run(HERE + ":_check", timeout=120)
    assert r["version"].startswith("2.21")


def test_keras_3_forced_by_the_environment_is_refused_clearly():
    r = fresh_interpreter.run(HERE + ":_check", timeout=120,
                              env={"TF_USE_LEGACY_KERAS": "0"})
    assert "TF_USE_LEGACY_KERAS" in r["error"]
    assert "Keras 3 cannot train under ParameterServerStrategy" in r["error"]
