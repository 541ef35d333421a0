"""Training recipes: the optimizer and schedule each model trains with by
default, and how epochs turn into applied updates.

Inception follows the paper-era recipe (../shared/DESIGN.md section 1,
tensorflow/models inception_distributed_train.py): RMSProp(decay 0.9,
momentum 0.9, epsilon 1.0), learning rate 0.045 decayed x0.94 every 2
epochs, batch 32 per worker, moving average of the weights (0.9999).

Epochs are counted in applied updates (`optimizer.iterations` under
ParameterServerStrategy): a synchronous update consumes N worker batches
(dropped gradients do not count), an asynchronous one a single batch.
"""
import dataclasses
import math

import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

OPTIMIZERS = ("rmsprop", "sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class Recipe:
    optimizer: str
    learning_rate: float
    lr_decay_rate: float = 1.0    # multiply the rate by this ...
    lr_decay_epochs: float = 0.0  # ... every this many epochs (0: never)
    batch_size: int = 32          # per worker
    ema_momentum: float = 0.0     # moving average of weights (0: off)
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1.0
    train_epochs: float = 1.0
    eval_every_updates: int = 100
    checkpoint_every_updates: int = 500


INCEPTION = Recipe(
    optimizer="rmsprop", learning_rate=0.045, lr_decay_rate=0.94,
    lr_decay_epochs=2.0, batch_size=32, ema_momentum=0.9999,
    rmsprop_decay=0.9, momentum=0.9, epsilon=1.0, train_epochs=100.0,
    eval_every_updates=1000, checkpoint_every_updates=1000)

# Chosen so that the default job (N=2 of 3 workers, one straggler) passes
# 0.95 test accuracy on digits well within its time budget on 2 cores.
SMALL_CNN = Recipe(
    optimizer="adam", learning_rate=0.003, lr_decay_rate=0.94,
    lr_decay_epochs=2.0, batch_size=32, epsilon=1e-7, train_epochs=10.0,
    eval_every_updates=40, checkpoint_every_updates=100)

RECIPES = {"inception_v3": INCEPTION, "inception_v3_small": INCEPTION,
           "small_cnn": SMALL_CNN}


def default_recipe(model_name):
    return RECIPES.get(model_name, SMALL_CNN)


def examples_per_update(batch_size, replicas_to_aggregate, sync):
    return batch_size * (replicas_to_aggregate if sync else 1)


def updates_for_epochs(epochs, num_examples, per_update):
    return max(1, int(math.ceil(epochs * num_examples / per_update)))


def learning_rate(recipe, updates_per_epoch):
    """A constant rate, or a staircase decay every `lr_decay_epochs` epochs
    of applied updates."""
    if recipe.lr_decay_epochs <= 0 or recipe.lr_decay_rate == 1.0:
        return recipe.learning_rate
    return tf.keras.optimizers.schedules.ExponentialDecay(
        recipe.learning_rate,
        decay_steps=max(1, int(round(recipe.lr_decay_epochs
                                     * updates_per_epoch))),
        decay_rate=recipe.lr_decay_rate, staircase=True)


def make_optimizer(recipe, updates_per_epoch):
    """The (inner) tf-keras optimizer of a recipe."""
    lr = learning_rate(recipe, updates_per_epoch)
    ema = dict(use_ema=recipe.ema_momentum > 0,
               ema_momentum=recipe.ema_momentum or 0.99)
    name = recipe.optimizer
    if name == "rmsprop":
        return tf.keras.optimizers.RMSprop(
            lr, rho=recipe.rmsprop_decay, momentum=recipe.momentum,
            epsilon=recipe.epsilon, **ema)
    if name == "sgd":
        return tf.keras.optimizers.SGD(lr, **ema)
    if name == "momentum":
        return tf.keras.optimizers.SGD(lr, momentum=recipe.momentum, **ema)
    if name == "adam":
        return tf.keras.optimizers.Adam(lr, epsilon=recipe.epsilon, **ema)
    raise ValueError("unknown optimizer %r; expected one of %s"
                     % (name, ", ".join(OPTIMIZERS)))


def current_learning_rate(optimizer):
    """The rate the optimizer applies at its current iteration."""
    lr = optimizer.learning_rate
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(optimizer.iterations))
    return float(tf.keras.backend.get_value(lr))
