"""Lazy loader for the compiled ops (`_dgc_ops.so`): `DGC>SampledTopK`, `DGC>CompressStep`,
`DGC>ScatterFlat`.

`load()` returns a callable `op(x, k, sample_ratio=0.01, seed=None)` that runs
the compiled selection kernel, and `load_compress_step()` the fused step's ops
(see `dgc_tf.ops.compress_step`); each returns None when the pure-TensorFlow
fallback (`dgc_tf.ops.topk.sampled_topk_tf`,
`dgc_tf.ops.compress_step.compress_step_tf`) must be used.

It tries, in order: the library installed next to this file; the per-user
cache for the running TensorFlow (`dgc_tf.ops.build.cached_library_path()`);
and, when neither loads (not built, or built for another TensorFlow) and a
C++ compiler is present, a build of the shipped sources into that cache
(once per TensorFlow version and ABI; `DGC_TF_REBUILD=0` turns this off).
Otherwise it warns once with the one-line fix and falls back.
`DGC_TF_FORCE_FALLBACK=1` asks for the fallback. The result is cached for the
life of the process.

The ops have no XLA kernel: they cannot run inside `jit_compile=True` functions.
"""

import logging
import os
import threading
import warnings

LIBRARY_NAME = "_dgc_ops.so"
OP_NAME = "DGC>SampledTopK"
# Ops without a gradient (no_gradient is registered for each once).
OP_NAMES = (OP_NAME, "DGC>CompressStep", "DGC>SparseCompressStep", "DGC>ScatterFlat")
FORCE_FALLBACK_ENV = "DGC_TF_FORCE_FALLBACK"
REBUILD_ENV = "DGC_TF_REBUILD"
REBUILD_HINT = "to build it for this TensorFlow, run: python -m dgc_tf.ops.build"

_lock = threading.Lock()
_UNSET = object()
_cached = _UNSET
_gradient_registered = False


def library_path():
    """Where the compiled library is expected: next to this file."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _force_fallback():
    return os.environ.get(FORCE_FALLBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _warn(message):
    # One channel only (no duplicate logging line); load() caches, so this
    # runs at most once per process.
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _make_op(module):
    import tensorflow as tf

    from dgc_tf.ops.dtypes import index_dtype_for, k_tensor

    raw = module.dgc_sampled_top_k

    def op(x, k, sample_ratio=0.01, seed=None):
        """Compiled exact top-k by magnitude; see `dgc_tf.ops.topk.sampled_topk`."""
        x = tf.convert_to_tensor(x)
        return raw(
            x, k_tensor(k),
            Tindices=index_dtype_for(x.shape.num_elements()),
            sample_ratio=float(sample_ratio),
            seed=-1 if seed is None else int(seed))

    return op


def _load_library(path):
    """The op module from the library at `path`; raises if it does not load."""
    global _gradient_registered
    import tensorflow as tf

    module = tf.load_op_library(path)
    if not hasattr(module, "dgc_sampled_top_k"):
        # TensorFlow skips ops a library registers twice: another copy of it
        # is already loaded in this process.
        raise RuntimeError(f"{path} registers no DGC ops (another copy of the library is "
                           "already loaded)")
    if not _gradient_registered:
        for name in OP_NAMES:
            try:
                tf.no_gradient(name)
            except KeyError:  # already registered (e.g. module reloaded)
                pass
        _gradient_registered = True
    return module


def _rebuild_allowed():
    return os.environ.get(REBUILD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _load_uncached():
    """The op library's module, or None for the fallback (warned about once)."""
    if _force_fallback():
        logging.getLogger("dgc_tf").info(
            "%s=1: using the pure-TensorFlow sampled_topk.", FORCE_FALLBACK_ENV)
        return None
    from dgc_tf.ops import build

    path = library_path()
    if not os.path.exists(path):
        problem = f"the compiled op library {path} was not found"
    else:
        try:
            return _load_library(path)
        except Exception as e:  # noqa: BLE001 - any load failure: try the cache
            problem = (f"could not load the compiled op library {path} ({type(e).__name__}: "
                       f"{e}); it was probably built for another TensorFlow")
    cached = build.cached_library_path()
    if os.path.exists(cached):
        try:
            return _load_library(cached)
        except Exception as e:  # noqa: BLE001
            problem += f"; the cached build {cached} does not load either ({e})"
    missing = build.compiler_problem() if _rebuild_allowed() else f"{REBUILD_ENV}=0"
    if missing is None:
        logging.getLogger("dgc_tf").warning(
            "dgc_tf: %s; building it for this TensorFlow into %s (once).", problem, cached)
        try:
            build.build_op_library(cached, cuda=build._flag("DGC_TF_CUDA"), verbose=False)
            return _load_library(cached)
        except Exception as e:  # noqa: BLE001
            missing = f"the build failed ({type(e).__name__}: {str(e)[-2000:]})"
    _warn(f"dgc_tf: {problem}, and it could not be rebuilt here ({missing}). The pure-TensorFlow "
          f"fallback of sampled_topk is used (same results, slower); {REBUILD_HINT}")
    return None


def _module():
    """The loaded library (cached), or None for the fallback."""
    global _cached
    if _cached is _UNSET:
        with _lock:
            if _cached is _UNSET:
                _cached = _load_uncached()
    return _cached


def load():
    """Returns a callable `(x, k, sample_ratio, seed) -> (values, indices)`, or None."""
    module = _module()
    return None if module is None else _make_op(module)


def load_compress_step():
    """The library's fused-step ops `(dense, sparse)` as generated wrappers, or None.

    Also None when `load()` is (tests switch the compiled path off through it),
    and for a library built before the fused step existed.
    """
    module = _module()
    if module is None or load() is None or not hasattr(module, "dgc_compress_step"):
        return None
    return module.dgc_compress_step, module.dgc_sparse_compress_step


def load_scatter_flat():
    """The library's in-place scatter `DGC>ScatterFlat` as its generated wrapper, or None.

    None also when `load()` is, and for a library built before the op existed.
    """
    module = _module()
    if module is None or load() is None or not hasattr(module, "dgc_scatter_flat"):
        return None
    return module.dgc_scatter_flat


def _reset_for_tests():
    """Forgets the cached result so that the next `load()` looks again."""
    global _cached
    with _lock:
        _cached = _UNSET
