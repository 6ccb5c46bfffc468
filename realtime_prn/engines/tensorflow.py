"""TensorFlow engine: the reference. Runs the Keras model itself (official checkpoint
loaded by name, or the built-in mb05uv model), so other engines are compared against it."""
from __future__ import annotations

import numpy as np

from .base import check_batch


class TensorFlowEngine:
    name = "tensorflow"

    def __init__(self, keras_model, max_batch: int = 16):
        import tensorflow as tf

        self.model = keras_model
        self.max_batch = max_batch
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        outs = [self._fn(batch[i:i + self.max_batch]).numpy()
                for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(outs) if len(outs) > 1 else outs[0]
