"""ps-sync: synchronous SGD with backup workers on TensorFlow 2."""
from setuptools import find_packages, setup

setup(
    name="ps-sync",
    version="0.1.0",
    description=("Synchronous SGD with backup workers (Chen et al. 2016) on "
                 "tf.distribute.ParameterServerStrategy"),
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["ps_sync", "ps_sync.*", "launch",
                                    "launch.*", "models", "models.*"]),
    install_requires=[
        # tensorflow only: tensorflow-cpu beside it would double a 1+ GB env.
        "tensorflow==2.21.*",
        # Keras 2: Keras 3 cannot train under ParameterServerStrategy.
        "tf-keras==2.21.*",
        # TensorFlow 2.21 no longer pulls it in; tf.summary needs it.
        "tensorboard==2.21.*",
        "tensorflow-datasets==4.9.*",
        "absl-py>=2.1,<3",
        "portpicker==1.6.*",
        "numpy>=1.26,<3",
        "scikit-learn>=1.5,<2",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout==2.4.*"],
    },
    entry_points={
        "console_scripts": ["ps-sync-launch=launch.__main__:main"],
    },
)
