"""Pure-NumPy reference of variance-based gradient compression (VGC).

Tsuzuku, Imachi, Akiba, ICLR 2018 workshop (arXiv 1802.06058), as specified in
issue 7 and `dgc_tf/vgc/__init__.py`'s algorithm section: N workers, each with
its own `r` and `s` per compressed variable; shared weights and a shared Keras
SGD momentum per variable.

One step, per compressed variable j and worker k (g, q: the worker's gradient
and mean squared per-example gradient estimate; B its batch size):

    r += g; s += q
    sent = r^2 > alpha * s / B
    G += r[sent];  r[sent] = 0;  s[sent] = 0;  s[~sent] *= zeta
then `keras_sgd_update(w, G)` (momentum, nesterov); dense variables:
`keras_sgd_update(w, sum_k g_k)`. Decoupled weight decay first, as Keras; optional local clipping of each worker's
whole gradient list to `local_clipnorm / sqrt(N)` (estimates scaled by the square).
"""

import math

import numpy as np

from tests.dgc_reference import keras_sgd_update


def micro_batch_moments(group_grads, group_sizes):
    """`(mean, estimate of mean g^2)` from m group mean gradients (one variable)."""
    n = np.asarray(group_sizes, np.float64)
    g = np.asarray(group_grads, np.float64)
    total = n.sum()
    mean = np.tensordot(n, g, axes=1) / total
    between = np.tensordot(n, (g - mean) ** 2, axes=1)
    return mean, between / (len(n) - 1) + mean ** 2


class VGCReference:
    def __init__(self, shapes, num_workers, learning_rate=0.01, alpha=1.0, zeta=0.999,
                 momentum=0.9, nesterov=False, min_compress_size=1024, weight_decay=None,
                 local_clipnorm=None, dtype=np.float64):
        self.local_clipnorm = local_clipnorm
        self.shapes = [tuple(s) for s in shapes]
        self.num_workers = num_workers
        self.lr = float(learning_rate)
        self.alpha, self.zeta = float(alpha), float(zeta)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay = weight_decay
        self.dtype = np.dtype(dtype)
        self.compressed = [len(s) >= 2 and math.prod(s) >= min_compress_size
                           for s in self.shapes]
        zeros = [np.zeros(s, self.dtype) if c else None
                 for s, c in zip(self.shapes, self.compressed)]
        self.r = [[None if z is None else z.copy() for z in zeros] for _ in range(num_workers)]
        self.s = [[None if z is None else z.copy() for z in zeros] for _ in range(num_workers)]
        self.sent_sum = [[None if z is None else z.copy() for z in zeros]
                         for _ in range(num_workers)]
        self.grad_sum = [[None if z is None else z.copy() for z in zeros]
                         for _ in range(num_workers)]
        self.m = [np.zeros(s, self.dtype) for s in self.shapes]
        self.last_counts = [[0] * len(shapes) for _ in range(num_workers)]

    def step(self, weights, grads, sq, batch_sizes):
        """`grads[k][j]`, `sq[k][j]`: worker k's gradient / estimate; `batch_sizes[k]`."""
        dt = self.dtype
        weights = [np.array(w, dt) for w in weights]
        if self.local_clipnorm is not None:
            # Clip each worker's whole list to local_clipnorm / sqrt(N); squares by c^2.
            threshold = self.local_clipnorm / math.sqrt(self.num_workers)
            grads, sq = [list(g) for g in grads], [list(q) for q in sq]
            for k in range(self.num_workers):
                norm = math.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                                     for g in grads[k]))
                c = threshold / norm if norm > threshold else 1.0
                grads[k] = [np.asarray(g, dt) * dt.type(c) for g in grads[k]]
                sq[k] = [np.asarray(q, dt) * dt.type(c * c) for q in sq[k]]
        if self.weight_decay:
            weights = [w - self.lr * self.weight_decay * w for w in weights]
        out = []
        for j, w in enumerate(weights):
            if not self.compressed[j]:
                g = sum(np.array(grads[k][j], dt) for k in range(self.num_workers))
                w, self.m[j] = keras_sgd_update(w, g, self.m[j], self.lr, self.momentum,
                                                self.nesterov)
                out.append(w)
                continue
            G = np.zeros(self.shapes[j], dt)
            for k in range(self.num_workers):
                g = np.array(grads[k][j], dt)
                r = self.r[k][j] + g
                s = self.s[k][j] + np.array(sq[k][j], dt)
                sent = r * r > dt.type(self.alpha) * s / dt.type(batch_sizes[k])
                G += np.where(sent, r, 0)
                self.sent_sum[k][j] += np.where(sent, r, 0)
                self.grad_sum[k][j] += g
                self.r[k][j] = np.where(sent, 0, r)
                self.s[k][j] = np.where(sent, 0, s * dt.type(self.zeta))
                self.last_counts[k][j] = int(sent.sum())
            w, self.m[j] = keras_sgd_update(w, G, self.m[j], self.lr, self.momentum,
                                            self.nesterov)
            out.append(w)
        return out
