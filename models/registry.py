"""Models by name, with the loss recipe that goes with each.

    model = registry.build_model("inception_v3_small", num_classes=1000)
    model.compile(optimizer, **registry.compile_kwargs("inception_v3_small"))

Inception models have two outputs, `logits` and `aux_logits`; their loss is
cross-entropy with label smoothing 0.1 on both, the auxiliary one weighted
0.4 (the paper-era recipe, ../shared/DESIGN.md section 1). Every model
outputs logits and takes integer labels.
"""
import dataclasses
import functools
from typing import Callable, Optional, Tuple

import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

from models import inception_v3, losses, small_cnn

MAIN_OUTPUT = "logits"
AUX_OUTPUT = "aux_logits"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., tf.keras.Model]  # (num_classes, input_shape, **kw)
    input_shape: Tuple[int, int, int]     # default input shape
    label_smoothing: float = 0.0
    aux_loss_weight: Optional[float] = None  # None: no auxiliary head
    description: str = ""


MODELS = {
    spec.name: spec for spec in [
        ModelSpec(
            "small_cnn", small_cnn.build, (8, 8, 1),
            description="2 conv + 1 dense layer for 8x8 digits; seconds on "
                        "2 cores"),
        ModelSpec(
            "inception_v3", inception_v3.build, (299, 299, 3),
            label_smoothing=0.1, aux_loss_weight=0.4,
            description="Inception-v3 (Szegedy et al. 2015), 299x299, "
                        "auxiliary head; ~27M parameters"),
        ModelSpec(
            "inception_v3_small",
            # A quarter of the filters and BatchNorm statistics that follow
            # a short run (0.99): the full model's 0.9997 needs ~10k steps
            # before its moving averages mean anything.
            functools.partial(inception_v3.build, depth_multiplier=0.25,
                              bn_momentum=0.99, name="inception_v3_small"),
            (75, 75, 3), label_smoothing=0.1, aux_loss_weight=0.4,
            description="Inception-v3 at 75x75 with 1/4 of the filters; the "
                        "same graph, sized to train on this machine"),
    ]
}


def names():
    return sorted(MODELS)


def get_spec(name):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError("unknown model %r; known models: %s"
                         % (name, ", ".join(names()))) from None


def build_model(name, num_classes, input_shape=None, **overrides):
    """A fresh, uncompiled tf.keras model. `input_shape` defaults to the
    model's own; `overrides` go to the builder (e.g. depth_multiplier)."""
    spec = get_spec(name)
    shape = tuple(input_shape or spec.input_shape)
    return spec.build(num_classes=num_classes, input_shape=shape, **overrides)


def has_aux(name):
    return get_spec(name).aux_loss_weight is not None


def loss_and_weights(name):
    """(loss, loss_weights) for `model.compile`: a single loss for
    single-output models, dicts keyed by output name for Inception."""
    spec = get_spec(name)
    main = losses.SparseSmoothedCrossentropy(spec.label_smoothing)
    if not has_aux(name):
        return main, None
    aux = losses.SparseSmoothedCrossentropy(spec.label_smoothing,
                                            name="aux_crossentropy")
    return ({MAIN_OUTPUT: main, AUX_OUTPUT: aux},
            {MAIN_OUTPUT: 1.0, AUX_OUTPUT: spec.aux_loss_weight})


def metrics(name):
    """Precision@1 and @5 on the main output (named top1 and top5)."""
    main = [tf.keras.metrics.SparseCategoricalAccuracy(name="top1"),
            tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]
    return {MAIN_OUTPUT: main} if has_aux(name) else main


def compile_kwargs(name):
    """loss, loss_weights and metrics for `model.compile(optimizer, **kw)`."""
    loss, weights = loss_and_weights(name)
    kwargs = dict(loss=loss, metrics=metrics(name))
    if weights is not None:
        kwargs["loss_weights"] = weights
    return kwargs


def main_logits(outputs):
    """The main logits from a model's output (a list for Inception)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs
