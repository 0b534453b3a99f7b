"""`RMSpropTF`: the release's optimizer, which Keras' own RMSprop does not reproduce."""
from __future__ import annotations

import keras
from keras import ops

from cream_tf import internals

__all__ = ["RMSpropTF"]


@keras.saving.register_keras_serializable(package="cream_tf")
class RMSpropTF(keras.optimizers.Optimizer):
    """RMSprop as TensorFlow 1 and the release's timm `RMSpropTF` define it.

    Differs from `keras.optimizers.RMSprop` in two ways that matter at epsilon 1e-3: the mean
    square starts at one (not zero), and epsilon sits inside the square root:
        ms  = rho * ms + (1 - rho) * g^2
        mom = momentum * mom + lr * g / sqrt(ms + epsilon)
        w  -= mom
    `l2` adds l2 * w to the gradient of every variable with more than one dimension (conv and
    dense kernels), the release's "weight decay on weights" (not decoupled). Keras' `use_ema`
    and `ema_momentum` work as for built-in optimizers.
    """

    def __init__(self, learning_rate=0.064, rho=0.9, momentum=0.9, epsilon=1e-3, l2=0.0,
                 name="rmsprop_tf", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.l2 = l2

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = [self.add_variable_from_reference(v, "mean_square", "ones")
                              for v in var_list]
        self._momenta = [self.add_variable_from_reference(v, "momentum") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2 and len(variable.shape) > 1:
            gradient = ops.add(gradient, ops.multiply(self.l2, variable))
        i = internals.optimizer_variable_index(self, variable)
        ms, mom = self._mean_squares[i], self._momenta[i]
        self.assign(ms, ops.add(ops.multiply(self.rho, ms),
                                ops.multiply(1.0 - self.rho, ops.square(gradient))))
        step = ops.divide(ops.multiply(lr, gradient), ops.sqrt(ops.add(ms, self.epsilon)))
        self.assign(mom, ops.add(ops.multiply(self.momentum, mom), step))
        self.assign_sub(variable, mom)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon, l2=self.l2)
        return config
