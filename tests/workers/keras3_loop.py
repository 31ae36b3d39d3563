"""A worker: Keras 3 custom training loop (strategy.run + apply_gradients) under
dgc_tf's MultiWorkerMirroredStrategy; writes its final weights to `<out>/worker<i>.npz`."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dgc_tf.distribute  # noqa: E402
import dgc_tf.keras3  # noqa: E402
from dgc_tf.data import fashion_mnist_arrays  # noqa: E402

out = sys.argv[1]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = dgc_tf.distribute.MultiWorkerMirroredStrategy()
(x, y), _ = fashion_mnist_arrays(train_size=256)
dataset = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x, y)).batch(64))

keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    optimizer = dgc_tf.keras3.DGCSGD(learning_rate=0.05, compress_ratio=0.01)
    optimizer.build(model.trainable_variables)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


@tf.function
def train_step(batch):
    def step(images, labels):
        with tf.GradientTape() as tape:
            per_example = loss_fn(labels, model(images, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=64)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return strategy.reduce("SUM", strategy.run(step, args=batch), axis=None)


for epoch in range(2):
    for batch in dataset:
        loss = train_step(batch)
    print(f"epoch {epoch} loss {float(loss):.4f}", flush=True)
np.savez(os.path.join(out, f"worker{index}.npz"),
         *[np.asarray(w) for w in model.get_weights()],
         ratio=np.array(optimizer.compression_stats()["compression_ratio"]))
