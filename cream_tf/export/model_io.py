"""What the exports need to know of a model: the size of the images it takes, and whether it
already ends in softmax."""
from __future__ import annotations

from cream_tf.export.target import ExportError

__all__ = ["image_shape", "outputs_probabilities"]


def image_shape(model) -> tuple:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or any(d is None for d in shape[1:]):
        raise ExportError(f"the model must take RGB images of a fixed size (None, H, W, 3), got "
                          f"input shape {shape}; build it with input_shape=(H, W, 3)")
    return shape[1:]


def outputs_probabilities(model) -> bool:
    """True when the model already ends in softmax (classifier_activation='softmax')."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return act is not None and getattr(act, "__name__", "") == "softmax"
