"""Independent pure-NumPy reference of Deep Gradient Compression (DGC).

Written from ``docs/algorithm.md`` sections 1-3 only (Lin et al., ICLR 2018, arXiv 1712.01887,
Algorithms 3 (momentum correction) and 4 (Nesterov)), *without* looking at the dgc_tf
implementation, so that comparing the two catches mistakes in either.

It simulates N synchronous data-parallel workers explicitly: every worker keeps its own momentum
``u`` and residual ``v`` for each compressed variable; the model weights (and the dense momentum of
the uncompressed variables) are shared.

One step, with ``t = iterations`` (0-based index of the step being applied), ``lr = lr(t)``:

1. local clipping (optional): every worker's whole gradient list (compressed *and* dense
   variables) is scaled by ``min(1, (local_clipnorm / sqrt(N)) / global_norm)``;
2. decoupled weight decay (optional, Keras semantics): ``w = w - lr * weight_decay * w`` on every
   variable, before the gradient update;
3. compressed variable, per worker: momentum ``u = m*u + g; v = v + u`` or Nesterov
   ``u = m*(u + g); v = v + u + g``; ``k = max(1, ceil(density * size))``; send the exact top-k of
   ``|v|`` (signed values of ``v``); ``v[sent] = 0``; with momentum masking ``u[sent] = 0``;
   ``G = sum over workers of the sparse sends``; ``w = w - lr * G``;
4. dense variable: ``g = sum over workers``; exactly ``keras.optimizers.SGD``;
5. ``iterations += 1``.

With ``exchange="leader"`` (shared leadership) step 3 differs: with ``m = ceil(k / max(N-1, 1))`` and
``c = min(k, m + ceil(m / 2))``, each worker offers its own top-``c`` indices of ``|v|``, largest
first; the indices ``I`` are the first ``N*m`` distinct ones taken rank by rank (every worker's
first, every worker's second, ...); ``G[I] = sum over workers of v_w[I]`` (each index once), and every worker zeroes ``v_w[I]`` (and
``u_w[I]`` with masking); what a worker would have selected but is not in ``I`` stays in its residual.
The attribute ``exchange`` may be changed between steps (``"auto"``'s warm-up takes the
all-gather, then the leader route).

Everything is computed in float64 unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = [
    "WARMUP_SCHEDULE",
    "DGCReference",
    "density_at",
    "num_selected",
    "topk_by_magnitude",
    "clip_by_global_norm",
    "keras_sgd_update",
]

#: The paper's exponential warm-up densities (sparsity 75%, 93.75%, 98.4375%, 99.6%).
WARMUP_SCHEDULE = (0.25, 0.0625, 0.015625, 0.00390625)


def density_at(step, compress_ratio, warmup_steps):
    """Density used at (0-based) optimizer step ``step``.

    For ``warmup_steps > 0`` and ``step < warmup_steps``: ``stage = floor(step * 4 / warmup_steps)``
    (computed in exact integer arithmetic) and density ``max(WARMUP_SCHEDULE[stage],
    compress_ratio)``; otherwise ``compress_ratio``.
    """
    step = int(step)
    warmup_steps = int(warmup_steps)
    if warmup_steps > 0 and step < warmup_steps:
        stage = (step * 4) // warmup_steps
        return float(max(WARMUP_SCHEDULE[stage], compress_ratio))
    return float(compress_ratio)


def _exact_fraction(x):
    """The rational number a user means by the float ``x``.

    ``Fraction(repr(x))`` is the shortest decimal that round-trips to ``x`` (``0.001`` -> 1/1000,
    not the binary value 0.001000000000000000020816...), so ``ceil(0.001 * 1000)`` is 1 and
    ``ceil(0.001 * 3000)`` is 3 (float64 would give 3.0000000000000004 -> 4).
    """
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    return Fraction(repr(float(x)))


def num_selected(size, density):
    """``max(1, ceil(density * size))`` computed exactly (see ``_exact_fraction``), capped at size."""
    size = int(size)
    if size <= 0:
        return 0
    k = math.ceil(_exact_fraction(density) * size)
    return int(min(size, max(1, k)))


def topk_by_magnitude(x, k):
    """Exact top-k of ``x.ravel()`` by ``|x|``.

    Returns ``(values, flat_indices)`` ordered by ``(|x| descending, index ascending)``; ties in
    ``|x|`` are broken in favour of the lower flat index. ``values`` are the signed entries of ``x``.
    """
    flat = np.asarray(x).ravel()
    k = int(k)
    if k < 0 or k > flat.size:
        raise ValueError(f"k={k} out of range for size {flat.size}")
    # lexsort sorts by the last key first: primary key -|x| (ascending == |x| descending),
    # secondary key the index (ascending). Fully deterministic, no reliance on sort stability.
    order = np.lexsort((np.arange(flat.size), -np.abs(flat)))
    idx = order[:k].astype(np.int64)
    return flat[idx].copy(), idx


def clip_by_global_norm(grads, clip_norm):
    """Scale the list ``grads`` by ``min(1, clip_norm / global_norm)`` (no-op for norm 0)."""
    norm = math.sqrt(sum(float(np.sum(np.square(np.asarray(g, dtype=np.float64)))) for g in grads))
    if norm > clip_norm and norm > 0.0:
        scale = clip_norm / norm
        return [g * scale for g in grads]
    return [g.copy() for g in grads]


def keras_sgd_update(w, g, m, lr, momentum, nesterov):
    """One step of ``keras.optimizers.SGD`` on one variable. Returns ``(new_w, new_m)``.

    momentum > 0: ``m = momentum*m - lr*g``; nesterov: ``w = w + momentum*m - lr*g``,
    else ``w = w + m``. momentum == 0: ``w = w - lr*g`` (``m`` unused, returned as is).
    """
    if momentum > 0:
        m = momentum * m - lr * g
        if nesterov:
            w = w + momentum * m - lr * g
        else:
            w = w + m
        return w, m
    return w - lr * g, m


class DGCReference:
    """N-worker NumPy simulation of DGC (docs/algorithm.md section 2).

    State (inspectable):
      ``u[w][j]``, ``v[w][j]``: momentum and residual of worker ``w`` for compressed variable ``j``
        (``None`` for dense variables);
      ``m[j]``: shared Keras-SGD momentum of dense variable ``j`` (``None`` for compressed ones);
      ``iterations``: number of steps applied;
      ``sent_sum[w][j]``: running dense sum of everything worker ``w`` sent for compressed ``j``;
      ``last_selected[w][j]``: flat indices worker ``w`` sent for ``j`` in the last step, in
        ``(|v| desc, index asc)`` order; ``last_sent_values[w][j]``: the matching values;
      ``last_density``, ``last_lr``: density and learning rate used by the last step;
      ``compressed[j]``: whether variable ``j`` is compressed.
    """

    def __init__(self, shapes, num_workers, learning_rate=0.01, momentum=0.9, nesterov=False,
                 compress_ratio=0.001, warmup_steps=0, momentum_masking=True, local_clipnorm=None,
                 min_compress_size=1024, weight_decay=None, dtype=np.float64,
                 exchange="allgather"):
        if exchange not in ("allgather", "leader"):
            raise ValueError(f"exchange must be 'allgather' or 'leader', got {exchange!r}")
        self.exchange = exchange
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.num_workers = int(num_workers)
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.learning_rate = learning_rate
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.compress_ratio = float(compress_ratio)
        self.warmup_steps = int(warmup_steps)
        self.momentum_masking = bool(momentum_masking)
        self.local_clipnorm = None if local_clipnorm is None else float(local_clipnorm)
        self.min_compress_size = int(min_compress_size)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.dtype = np.dtype(dtype)

        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.compressed = [len(s) >= 2 and n >= self.min_compress_size
                           for s, n in zip(self.shapes, self.sizes)]
        nv, nw = len(self.shapes), self.num_workers

        def zeros_if(flag, shape):
            return np.zeros(shape, self.dtype) if flag else None

        self.u = [[zeros_if(c, s) for s, c in zip(self.shapes, self.compressed)] for _ in range(nw)]
        self.v = [[zeros_if(c, s) for s, c in zip(self.shapes, self.compressed)] for _ in range(nw)]
        self.sent_sum = [[zeros_if(c, s) for s, c in zip(self.shapes, self.compressed)]
                         for _ in range(nw)]
        self.last_selected = [[None] * nv for _ in range(nw)]
        self.last_sent_values = [[None] * nv for _ in range(nw)]
        self.m = [zeros_if(not c, s) for s, c in zip(self.shapes, self.compressed)]
        self.iterations = 0
        self.last_density = None
        self.last_lr = None

    # ------------------------------------------------------------------ helpers
    def lr_at(self, step):
        lr = self.learning_rate
        return float(lr(int(step))) if callable(lr) else float(lr)

    def density_at(self, step):
        return density_at(step, self.compress_ratio, self.warmup_steps)

    def num_selected(self, j, step=None):
        step = self.iterations if step is None else step
        return num_selected(self.sizes[j], self.density_at(step))

    # --------------------------------------------------------------------- step
    def step(self, weights, grads_per_worker):
        """Apply one synchronous step; returns the new list of weights (``dtype`` arrays).

        ``grads_per_worker[w][j]``: worker ``w``'s gradient for variable ``j``, already scaled so
        that the sum over workers is the global-batch mean.
        """
        nv, nw = len(self.shapes), self.num_workers
        if len(weights) != nv:
            raise ValueError(f"expected {nv} weights, got {len(weights)}")
        if len(grads_per_worker) != nw:
            raise ValueError(f"expected gradients of {nw} workers, got {len(grads_per_worker)}")
        t = self.iterations
        lr = self.lr_at(t)
        density = self.density_at(t)
        mom = self.momentum

        weights = [np.array(w, dtype=self.dtype).reshape(s) for w, s in zip(weights, self.shapes)]
        grads = []
        for gw in grads_per_worker:
            if len(gw) != nv:
                raise ValueError(f"expected {nv} gradients per worker, got {len(gw)}")
            grads.append([np.array(g, dtype=self.dtype).reshape(s)
                          for g, s in zip(gw, self.shapes)])

        # 1. local clipping, per worker, over its whole gradient list
        if self.local_clipnorm is not None:
            c = self.local_clipnorm / math.sqrt(nw)
            grads = [clip_by_global_norm(gw, c) for gw in grads]

        # 2. decoupled weight decay (Keras): before the gradient update, same on all workers
        if self.weight_decay is not None:
            weights = [w - lr * self.weight_decay * w for w in weights]

        new_weights = []
        for j in range(nv):
            w = weights[j]
            if self.compressed[j]:
                # 3. momentum correction + residual + top-k + masking + sparse sum exchange
                k = num_selected(self.sizes[j], density)
                G = np.zeros(self.sizes[j], self.dtype)
                corrected = []
                for wk in range(nw):
                    g = grads[wk][j]
                    u = self.u[wk][j]
                    v = self.v[wk][j]
                    if self.nesterov:
                        u = mom * (u + g)
                        v = v + u + g
                    else:
                        u = mom * u + g
                        v = v + u
                    corrected.append((u, v))
                if self.exchange == "leader":
                    share = -(-k // max(nw - 1, 1))
                    offered = min(k, share + -(-share // 2))
                    ranked = np.stack([topk_by_magnitude(corrected[wk][1], offered)[1]
                                       for wk in range(nw)])
                    by_rank = ranked.T.reshape(-1)
                    _, first = np.unique(by_rank, return_index=True)
                    led = by_rank[np.sort(first)][:share * nw]
                for wk in range(nw):
                    u, v = corrected[wk]
                    if self.exchange == "leader":
                        idx = led
                        vals = v.reshape(-1)[idx].copy()
                    else:
                        vals, idx = topk_by_magnitude(v, k)
                    v_flat = v.reshape(-1).copy()
                    v_flat[idx] = 0
                    v = v_flat.reshape(self.shapes[j])
                    if self.momentum_masking:
                        u_flat = u.reshape(-1).copy()
                        u_flat[idx] = 0
                        u = u_flat.reshape(self.shapes[j])
                    self.u[wk][j] = u
                    self.v[wk][j] = v
                    np.add.at(G, idx, vals)  # duplicates (none within a worker) summed
                    ss = self.sent_sum[wk][j].reshape(-1).copy()
                    np.add.at(ss, idx, vals)
                    self.sent_sum[wk][j] = ss.reshape(self.shapes[j])
                    self.last_selected[wk][j] = idx
                    self.last_sent_values[wk][j] = vals
                new_weights.append(w - lr * G.reshape(self.shapes[j]))
            else:
                # 4. dense path: summed gradient, exactly keras.optimizers.SGD
                g = grads[0][j].copy()
                for wk in range(1, nw):
                    g = g + grads[wk][j]
                w, self.m[j] = keras_sgd_update(w, g, self.m[j], lr, mom, self.nesterov)
                new_weights.append(w)

        # 5.
        self.iterations += 1
        self.last_density = density
        self.last_lr = lr
        return new_weights
