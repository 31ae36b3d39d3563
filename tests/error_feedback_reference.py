"""Independent NumPy reference of error-feedback top-k around a Keras optimizer.

Written from the method's definition (Stich et al. 2018, "Sparsified SGD with
memory"; the `dgc_tf.TopKErrorFeedback` docstring), not from the TensorFlow
code. N synchronous workers; each keeps a residual ``e[w][j]`` per compressed
variable. One step, with ``t`` the step index (0-based):

1. worker w, compressed variable j: ``e = e + g``; ``k = max(1, ceil(density(t) * size))``;
   send the exact top-k of ``|e|`` (ties to the lower index); ``e[sent] = 0``;
   ``G = sum over workers of the sends`` (zero elsewhere);
2. dense variable j: ``G = sum over workers of g``;
3. every variable: decoupled weight decay ``w -= lr * wd * w`` (if any), then the
   inner optimizer's update on ``G`` (Keras SGD or Keras Adam, one shared state).

Selection, density and Keras SGD come from the DGC reference (also written
from the paper alone); Keras Adam is written out here.
"""

import numpy as np

from tests.dgc_reference import density_at, keras_sgd_update, num_selected, topk_by_magnitude


class KerasSGD:
    """`keras.optimizers.SGD(learning_rate, momentum, nesterov)` on NumPy arrays."""

    def __init__(self, learning_rate, momentum=0.0, nesterov=False, weight_decay=None):
        self.learning_rate, self.momentum, self.nesterov = learning_rate, momentum, nesterov
        self.weight_decay = weight_decay
        self.m = {}

    def update(self, j, w, g, t):
        m = self.m.setdefault(j, np.zeros_like(w))
        w, self.m[j] = keras_sgd_update(w, g, m, self.learning_rate, self.momentum, self.nesterov)
        return w


class KerasAdam:
    """`keras.optimizers.Adam` (no amsgrad) on NumPy arrays; `t` is its 0-based step."""

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
        self.learning_rate, self.beta_1, self.beta_2 = learning_rate, beta_1, beta_2
        self.epsilon, self.weight_decay = epsilon, weight_decay
        self.m, self.v = {}, {}

    def update(self, j, w, g, t):
        m = self.m.setdefault(j, np.zeros_like(w))
        v = self.v.setdefault(j, np.zeros_like(w))
        step = t + 1
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        m = m + (g - m) * (1 - self.beta_1)
        v = v + (g * g - v) * (1 - self.beta_2)
        self.m[j], self.v[j] = m, v
        return w - m * alpha / (np.sqrt(v) + self.epsilon)


class ErrorFeedbackReference:
    """N-worker simulation; `inner` a `KerasSGD` or `KerasAdam`.

    State: ``e[w][j]`` (None for dense variables), ``sent_sum[w][j]`` (all that
    worker w sent for j), ``applied_sum[j]`` (all G applied to j), ``iterations``.
    """

    def __init__(self, shapes, num_workers, inner, compress_ratio=0.001, warmup_steps=0,
                 min_compress_size=1024, dtype=np.float64):
        self.shapes = [tuple(s) for s in shapes]
        self.num_workers, self.inner = num_workers, inner
        self.compress_ratio, self.warmup_steps = compress_ratio, warmup_steps
        self.dtype = np.dtype(dtype)
        self.compressed = [len(s) >= 2 and int(np.prod(s)) >= min_compress_size
                           for s in self.shapes]

        def zeros(j):
            return np.zeros(self.shapes[j], self.dtype) if self.compressed[j] else None

        self.e = [[zeros(j) for j in range(len(shapes))] for _ in range(num_workers)]
        self.sent_sum = [[zeros(j) for j in range(len(shapes))] for _ in range(num_workers)]
        self.applied_sum = [np.zeros(s, self.dtype) for s in self.shapes]
        self.iterations = 0

    def step(self, weights, grads_per_worker):
        """One step; ``grads_per_worker[w][j]`` scaled so their sum is the batch mean."""
        t = self.iterations
        density = density_at(t, self.compress_ratio, self.warmup_steps)
        new = []
        for j, shape in enumerate(self.shapes):
            w = np.array(weights[j], self.dtype)
            grads = [np.array(gw[j], self.dtype) for gw in grads_per_worker]
            if self.compressed[j]:
                G = np.zeros(w.size, self.dtype)
                for wk in range(self.num_workers):
                    e = (self.e[wk][j] + grads[wk]).ravel()
                    values, idx = topk_by_magnitude(e, num_selected(w.size, density))
                    e[idx] = 0
                    self.e[wk][j] = e.reshape(shape)
                    G[idx] += values
                    self.sent_sum[wk][j].ravel()[idx] += values
                G = G.reshape(shape)
            else:
                G = sum(grads)
            self.applied_sum[j] += G
            if self.inner.weight_decay:
                w = w - self.inner.learning_rate * self.inner.weight_decay * w
            new.append(self.inner.update(j, w, G, t).astype(self.dtype))
        self.iterations += 1
        return new
