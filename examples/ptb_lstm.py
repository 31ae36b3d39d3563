"""Word-level LSTM language model on Penn Treebank: dense SGD next to DGC and VGC.

The small configuration of Zaremba, Sutskever & Vinyals 2014 ("Recurrent
Neural Network Regularization"; test perplexity 114.5): 2 LSTM layers of 200
units, 20 unrolled steps, batch 20, vocabulary 10,000, no dropout, every
weight initialised uniform in [-0.1, 0.1] (forget-gate bias included, no +1),
SGD with learning rate 1.0 on the loss summed over the 20 steps and averaged
over the batch, gradients clipped to global norm 5, learning rate halved after
every epoch from epoch 5 on, 13 epochs.

The LSTM is **stateful across batches**, as in the paper: the text is laid
out in 20 contiguous rows (`dgc_tf.ptb`, the tutorial's layout), each replica
owns a fixed block of rows (replica r of N: rows r*20/N ... (r+1)*20/N - 1)
and carries its final (h, c) into its next batch; the state is reset to zero
at the start of every epoch and of every evaluation. The global batch stays
20 whatever the number of workers, so the schedule is the paper's.

Up to three runs, same model, seed, data and schedule (`--optimizer both`:
dense and DGC; `all`: dense, DGC and VGC):

* dense: `keras.optimizers.SGD(lr)`. The gradient is summed over the replicas
  first and clipped to global norm 5 after that, as one process would do it.
  (Keras 3 clips *before* its own all-reduce, i.e. per replica, so the script
  all-reduces itself, clips, and hands the optimizer the clipped sum divided by
  N; the optimizer's all-reduce then sums N identical copies back. That costs
  one extra dense exchange per step and changes nothing in the math.)
* DGC: `dgc_tf.keras3.DGCSGD(lr, momentum=0, compress_ratio=0.001,
  warmup_steps=<one epoch>, local_clipnorm=5)`: 99.9% sparsity after a
  one-epoch warm-up, each replica's gradient clipped to 5/sqrt(N) before it is
  accumulated (the paper's local gradient clipping) instead of global
  clipping. Momentum 0 because Zaremba's schedule is plain SGD with lr 1.0;
  DGC with momentum 0 is still DGC (residual accumulation and top-k), and the
  two runs then differ only in the gradient exchange.
* VGC: `dgc_tf.vgc.VGCSGD(lr, momentum=0, alpha=--alpha, zeta=--zeta,
  local_clipnorm=5)` (variance-based compression, Tsuzuku et al. 2018; no
  warm-up; the count sent varies per step). Each replica splits its rows into
  `--vgc-groups` strided groups (rows j, j+m, ...), each group with its own
  rows of the carried (h, c) state, and runs one forward/backward per group;
  group j's loss is its summed loss over `batch_size * n_j / rows`, so every
  group's gradient is a mean in the replicas' common scale. The groups' new
  states are put back in the original row order, and
  `dgc_tf.vgc.micro_batch_moments` turns the group gradients into the
  minibatch gradient (exact) and the estimate of the mean squared per-row
  gradient that VGC's test `r^2 > alpha * s / B` needs (B = rows per replica).

`adam` is `keras.optimizers.Adam(lr)` on the dense path above, `adam-ef` the
same Adam inside `dgc_tf.TopKErrorFeedback(compress_ratio, warmup_steps=<one
epoch>, local_clipnorm=5)` (error-feedback top-k: no momentum correction),
`adam-both` runs the two; give them an Adam learning rate (`--learning-rate 0.002`).

Validation perplexity after every epoch, test perplexity at the end (batch 20,
20 steps, state carried across the whole split; the paper evaluates with
batch 1, step 1 - with the state carried the difference is negligible).

Two real local workers:

    python -m dgc_tf.launch --workers 2 -- examples/ptb_lstm.py --epochs 13

Single process (MirroredStrategy over the GPUs or 2 logical CPUs):

    python examples/ptb_lstm.py --epochs 1 --max-steps-per-epoch 50

`--max-steps-per-epoch M` shortens every epoch to M batches; successive epochs
then continue through the training text (epoch e uses batches e*M ... of the
full epoch, wrapping around), and the warm-up and the learning-rate decay
count these short epochs.
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from dgc_tf.distribute import is_chief, strategy_from_environment  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None,
                        help="shorten every epoch to this many batches")
    parser.add_argument("--max-eval-steps", type=int, default=None,
                        help="evaluate on only this many batches of valid/test (tests)")
    parser.add_argument("--optimizer", choices=["dense", "dgc", "vgc", "both", "all",
                                                    "adam", "adam-ef", "adam-both"],
                        default="both", help="both: dense and dgc; all: dense, dgc and vgc")
    parser.add_argument("--json", help="write the results here (chief only)")
    parser.add_argument("--batch-size", type=int, default=20, help="global batch size")
    parser.add_argument("--num-steps", type=int, default=20, help="unrolled steps")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--init-scale", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=1.0)
    parser.add_argument("--lr-decay", type=float, default=0.5)
    parser.add_argument("--decay-after", type=int, default=4,
                        help="epochs at the full learning rate")
    parser.add_argument("--clipnorm", type=float, default=5.0)
    parser.add_argument("--momentum", type=float, default=0.0, help="DGC and VGC momentum")
    parser.add_argument("--compress-ratio", type=float, default=0.001)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="VGC: send where r^2 > alpha * s / B")
    parser.add_argument("--zeta", type=float, default=0.999, help="VGC: decay of s")
    parser.add_argument("--vgc-groups", type=int, default=4,
                        help="VGC: groups of rows per replica for the variance estimate")
    parser.add_argument("--replicas", type=int, default=2,
                        help="replicas of the single-process MirroredStrategy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exchange", choices=["auto", "leader", "allgather"], default="auto",
                        help="DGC's sparse exchange between replicas (the `exchange` of "
                             "dgc_tf.distribute.SparseAllGather)")
    return parser.parse_args(argv)


def build_model(keras, vocab_size, args):
    """`[tokens, h1, c1, h2, c2, ...] -> [logits, h1', c1', ...]`."""
    init = keras.initializers.RandomUniform(-args.init_scale, args.init_scale)
    tokens = keras.Input((args.num_steps,), dtype="int32", name="tokens")
    states = [keras.Input((args.hidden,), name=f"{kind}{i}")
              for i in range(args.layers) for kind in ("h", "c")]
    x = keras.layers.Embedding(vocab_size, args.hidden, embeddings_initializer=init)(tokens)
    new_states = []
    for i in range(args.layers):
        x, h, c = keras.layers.LSTM(
            args.hidden, return_sequences=True, return_state=True,
            kernel_initializer=init, recurrent_initializer=init, bias_initializer=init,
            unit_forget_bias=False)(x, initial_state=states[2 * i:2 * i + 2])
        new_states += [h, c]
    logits = keras.layers.Dense(vocab_size, kernel_initializer=init, bias_initializer=init)(x)
    return keras.Model([tokens] + states, [logits] + new_states)


def learning_rate_at(epoch, args):
    """lr for 0-based epoch e: lr * decay ** max(e + 1 - decay_after, 0)."""
    return args.learning_rate * args.lr_decay ** max(epoch + 1 - args.decay_after, 0)


def train(name, strategy, data, args):
    import keras

    import dgc_tf.keras3
    import dgc_tf.vgc
    from dgc_tf.compressors.base import densify

    train_ids, valid_ids, test_ids, vocab = data
    from dgc_tf.datasets import ptb

    n = strategy.num_replicas_in_sync
    if args.batch_size % n:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {n} replicas")
    rows = args.batch_size // n
    groups = args.vgc_groups
    if name == "vgc" and not 2 <= groups <= rows:
        raise SystemExit(f"--vgc-groups {groups} must be between 2 and the {rows} rows per "
                         "replica")
    x_all, y_all = ptb.epoch_batches(train_ids, args.batch_size, args.num_steps)
    full_epoch = len(x_all)
    steps_per_epoch = min(args.max_steps_per_epoch or full_epoch, full_epoch)
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)

    def per_replica(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(
                array[:, ctx.replica_id_in_sync_group * rows:
                      (ctx.replica_id_in_sync_group + 1) * rows]))

    xs, ys = per_replica(x_all), per_replica(y_all)

    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = build_model(keras, len(vocab), args)
        # A float, assigned at the start of every epoch: DGCSGD with a LearningRateSchedule
        # fails under a strategy (the schedule's per-replica value reaches
        # the frame's apply_updates in cross-replica context).
        lr = learning_rate_at(0, args)
        if name == "dense":
            optimizer = keras.optimizers.SGD(lr)
        elif name == "adam":
            optimizer = keras.optimizers.Adam(lr)
        elif name == "adam-ef":
            optimizer = dgc_tf.TopKErrorFeedback(
                keras.optimizers.Adam(lr), compress_ratio=args.compress_ratio,
                warmup_steps=warmup_steps, local_clipnorm=args.clipnorm)
        elif name == "vgc":
            optimizer = dgc_tf.vgc.VGCSGD(
                learning_rate=lr, momentum=args.momentum, alpha=args.alpha, zeta=args.zeta,
                local_clipnorm=args.clipnorm)
        else:
            optimizer = dgc_tf.keras3.DGCSGD(
                learning_rate=lr, momentum=args.momentum, compress_ratio=args.compress_ratio,
                warmup_steps=warmup_steps, local_clipnorm=args.clipnorm)
        optimizer.build(model.trainable_variables)
    variables = model.trainable_variables
    zeros = lambda batch: [tf.zeros((batch, args.hidden)) for _ in range(2 * args.layers)]

    def vgc_replica_step(x, y, states):
        # Strided groups of rows, each with its own rows of the carried state.
        group_grads, sizes, group_states, loss_sum = [], [], [], 0.0
        for j in range(groups):
            xj, yj = x[j::groups], y[j::groups]
            n_j = tf.shape(xj)[0]
            with tf.GradientTape() as tape:
                logits, *new_states = model([xj] + [s[j::groups] for s in states],
                                            training=True)
                token_losses = keras.losses.sparse_categorical_crossentropy(
                    yj, logits, from_logits=True)
                summed = tf.reduce_sum(token_losses)
                # A mean over the group's rows, in the scale of the other runs' loss
                # (summed over steps, divided by the global batch): sum / (B_global n_j / rows).
                loss = summed / (args.batch_size * tf.cast(n_j, summed.dtype) / rows)
            grads = tape.gradient(loss, variables)
            group_grads.append([densify(g, v) for g, v in zip(grads, variables)])
            sizes.append(n_j)
            group_states.append(new_states)
            loss_sum += summed
        # Back to the original row order: group j holds rows j, j + m, ...
        positions = [tf.range(j, rows, groups) for j in range(groups)]
        new_states = [tf.ensure_shape(tf.dynamic_stitch(positions, [g[k] for g in group_states]),
                                      states[k].shape) for k in range(len(states))]
        grads, sq, batch = dgc_tf.vgc.micro_batch_moments(group_grads, sizes)
        optimizer.apply_gradients(zip(grads, variables), grad_sq_means=sq, batch_size=batch)
        return loss_sum, new_states

    def replica_step(index, x_epoch, y_epoch, states):
        x, y = tf.gather(x_epoch, index), tf.gather(y_epoch, index)
        if name == "vgc":
            return vgc_replica_step(x, y, states)
        with tf.GradientTape() as tape:
            logits, *new_states = model([x] + list(states), training=True)
            token_losses = keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True)
            # Summed over the unrolled steps, averaged over the global batch.
            loss = tf.reduce_sum(token_losses) / args.batch_size
        grads = tape.gradient(loss, variables)
        if name in ("dense", "adam"):
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, args.clipnorm)
            grads = [tf.IndexedSlices(g.values / n, g.indices, g.dense_shape)
                     if isinstance(g, tf.IndexedSlices) else g / n for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return tf.reduce_sum(token_losses), new_states

    @tf.function
    def train_step(index, states):
        loss_sum, new_states = strategy.run(replica_step, args=(index, xs, ys, states))
        return strategy.reduce("SUM", loss_sum, axis=None), new_states

    @tf.function
    def eval_step(x, y, states):
        logits, *new_states = model([x] + list(states), training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return tf.reduce_sum(losses), new_states

    def perplexity(ids):
        # Every worker evaluates the whole split locally (no collectives).
        states, total, count = zeros(args.batch_size), 0.0, 0
        for i, (x, y) in enumerate(ptb.iterate_batches(ids, args.batch_size, args.num_steps)):
            if args.max_eval_steps is not None and i >= args.max_eval_steps:
                break
            loss_sum, states = eval_step(tf.constant(x), tf.constant(y), states)
            total += float(loss_sum)
            count += x.size
        return math.exp(total / count)

    log = print if is_chief() else (lambda *a, **k: None)
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        states = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.zeros((rows, args.hidden)))
        states = [states] * (2 * args.layers)
        epoch_loss, epoch_start = 0.0, time.perf_counter()
        lr_now = learning_rate_at(epoch, args)
        optimizer.learning_rate = lr_now
        for step in range(steps_per_epoch):
            index = tf.constant((epoch * steps_per_epoch + step) % full_epoch)
            loss_sum, states = train_step(index, states)
            epoch_loss += float(loss_sum)
        train_ppl = math.exp(epoch_loss / (steps_per_epoch * args.batch_size * args.num_steps))
        seconds = time.perf_counter() - epoch_start
        valid_ppl = perplexity(valid_ids)
        record = {"epoch": epoch + 1, "learning_rate": lr_now, "train_perplexity": train_ppl,
                  "valid_perplexity": valid_ppl, "train_seconds": seconds}
        if name in ("dgc", "adam-ef"):
            record["density_end"] = optimizer.current_density()
            record["compression_ratio_so_far"] = optimizer.compression_stats()[
                "compression_ratio"]
        elif name == "vgc":
            # VGC: the fraction of compressed elements sent so far (all replicas, steps).
            record["density_so_far"] = optimizer.current_density()
            record["compression_ratio_so_far"] = optimizer.compression_stats()[
                "compression_ratio"]
        history.append(record)
        log(f"[{name}] epoch {epoch + 1}/{args.epochs} lr {lr_now:g}: train ppl "
            f"{train_ppl:.2f}, valid ppl {valid_ppl:.2f} ({seconds:.1f} s, "
            f"{1000 * seconds / steps_per_epoch:.0f} ms/step)", flush=True)
    train_seconds = time.perf_counter() - start
    result = {
        "optimizer": name,
        "steps_per_epoch": steps_per_epoch,
        "full_epoch_steps": full_epoch,
        "steps": int(optimizer.iterations.numpy()),
        "train_seconds": train_seconds,
        "seconds_per_step": sum(h["train_seconds"] for h in history) / (
            steps_per_epoch * args.epochs),
        "valid_perplexity": history[-1]["valid_perplexity"],
        "test_perplexity": perplexity(test_ids),
        "history": history,
    }
    if name in ("dgc", "vgc", "adam-ef"):
        stats = optimizer.compression_stats()
        steps = result["steps"]
        result.update(
            compression_ratio=stats["compression_ratio"],
            compression_ratio_last_step=stats["dense_bytes"] / steps / stats["last_bytes_sent"],
            bytes_sent_per_step=stats["bytes_sent"] / steps,
            dense_bytes_per_step=stats["dense_bytes"] / steps)
        if name in ("dgc", "adam-ef"):
            result.update(warmup_steps=warmup_steps)
            if hasattr(strategy, "exchange_routes"):  # the route each variable took last
                result.update(exchange=args.exchange, exchange_routes=strategy.exchange_routes)
        else:
            result.update(density=stats["density"], sent_elements=stats["sent_elements"],
                          skipped_steps=stats["skipped_steps"], alpha=args.alpha,
                          zeta=args.zeta, vgc_groups=groups)
    log(f"[{name}] test ppl {result['test_perplexity']:.2f}", flush=True)
    return result


def main(argv=None):
    args = parse_args(argv)
    import dgc_tf
    from dgc_tf.datasets import ptb

    strategy = strategy_from_environment(args.replicas, exchange=args.exchange)
    data = ptb.load_ptb()
    log = print if is_chief() else (lambda *a, **k: None)
    log(f"PTB LSTM: {strategy.num_replicas_in_sync} replicas, {len(data[0])} train tokens, "
        f"vocab {len(data[3])}, {args.epochs} epochs"
        + (f" of at most {args.max_steps_per_epoch} steps" if args.max_steps_per_epoch else "")
        + f", batch {args.batch_size}x{args.num_steps}, selection op: "
        f"{'compiled' if dgc_tf.ops.using_custom_op() else 'pure-TF fallback'}", flush=True)

    names = {"both": ["dense", "dgc"], "all": ["dense", "dgc", "vgc"],
             "adam-both": ["adam", "adam-ef"]}.get(
        args.optimizer, [args.optimizer])
    results = [train(name, strategy, data, args) for name in names]

    if not is_chief():
        return results
    print()
    print(f"{'optimizer':<10} {'valid ppl':>10} {'test ppl':>10} {'train s':>9} "
          f"{'ms/step':>8} {'compression':>12} {'density':>8}")
    for r in results:
        ratio = r.get("compression_ratio")
        density = r.get("density")
        print(f"{r['optimizer']:<10} {r['valid_perplexity']:>10.2f} "
              f"{r['test_perplexity']:>10.2f} {r['train_seconds']:>9.1f} "
              f"{1000 * r['seconds_per_step']:>8.0f} "
              + (f"{ratio:>11.1f}x" if ratio else f"{'1.0x':>12}")
              + (f" {density:>8.4f}" if density is not None else f" {'-':>8}"))
    summary = {"args": vars(args), "replicas": strategy.num_replicas_in_sync,
               "workers": int(os.environ.get("DGC_TF_NUM_WORKERS", "1")),
               "paper_test_perplexity": 114.5, "results": results}
    print("RESULT_JSON " + json.dumps(
        {r["optimizer"]: {k: r.get(k) for k in ("valid_perplexity", "test_perplexity",
                                                 "compression_ratio", "density")}
         for r in results}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return results


if __name__ == "__main__":
    main()
