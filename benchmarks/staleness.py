"""Staleness against test accuracy, for a shallow and a deep network.

  python -m benchmarks.staleness [--delays 0,1,2,4,8,16,32] [--depths 1,8]
      [--seeds 0,1,2] [--steps 1500] [--lr 0.05]

The paper's first finding: asynchronous training applies gradients computed
on parameters several updates old, and that staleness hurts test accuracy,
more so for deeper networks. This is a controlled simulation of exactly
that, in one process (no cluster): at step t the network computes the
gradient of batch t on its current parameters w_t and puts it in a FIFO; the
update applied at step t is the gradient that entered the FIFO k steps
earlier, computed on w_{t-k} (the first k steps apply nothing). k = 0 is
plain mini-batch SGD. With N asynchronous workers of equal speed the mean
staleness is about N - 1.

Networks: MLPs on scikit-learn's digits (64 inputs) with `depth` hidden
ReLU layers of `--width` units (He initialisation), softmax output; plain
SGD at one learning rate for every k and depth, batch 32. For each seed the
initial weights and the batch order are the same for every k (a paired
comparison). Reported: test precision@1 after `--steps` steps, per depth,
k and seed, and the drop from k = 0.
"""
from benchmarks import common  # first: pins Keras 2 before TensorFlow

import argparse
import collections
import os
import sys
import time


def build(depth, width, seed):
    import tensorflow as tf
    init = tf.keras.initializers.HeNormal(seed=seed)
    layers = [tf.keras.layers.Flatten(input_shape=(8, 8, 1))]
    for i in range(depth):
        layers.append(tf.keras.layers.Dense(
            width, activation="relu",
            kernel_initializer=tf.keras.initializers.HeNormal(seed=seed + i)))
    layers.append(tf.keras.layers.Dense(10, kernel_initializer=init))
    return tf.keras.Sequential(layers)


def train_delayed(data, depth, width, delay, seed, steps, lr, batch,
                  eval_every):
    """One run; returns the test accuracy curve and the final accuracy."""
    import numpy as np
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    model = build(depth, width, seed)
    variables = model.trainable_variables
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def gradient(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, variables), loss

    @tf.function
    def apply(grads):
        for v, g in zip(variables, grads):
            v.assign_sub(lr * g)

    @tf.function
    def accuracy(x, y):
        pred = tf.argmax(model(x, training=False), axis=1,
                         output_type=tf.int32)
        return tf.reduce_mean(tf.cast(tf.equal(pred, y), tf.float32))

    rng = np.random.default_rng(seed)  # the batch order: same for every k
    n = len(data.y_train)
    order = np.concatenate([rng.permutation(n)
                            for _ in range(steps * batch // n + 2)])
    x_test, y_test = tf.constant(data.x_test), tf.constant(data.y_test)
    fifo = collections.deque()
    curve = []
    diverged = False
    for t in range(steps):
        idx = order[t * batch:(t + 1) * batch]
        grads, loss = gradient(tf.constant(data.x_train[idx]),
                               tf.constant(data.y_train[idx]))
        if not np.isfinite(float(loss)):
            diverged = True
            break
        fifo.append(grads)
        if len(fifo) > delay:
            apply(fifo.popleft())
        if (t + 1) % eval_every == 0:
            curve.append([t + 1, float(accuracy(x_test, y_test))])
    final = 0.0 if diverged else float(accuracy(x_test, y_test))
    return {"final_top1": final, "diverged": diverged, "curve": curve}


def summarize(runs, depths, delays):
    out = {}
    for depth in depths:
        rows = {}
        for k in delays:
            accs = [r["final_top1"] for r in runs
                    if r["depth"] == depth and r["delay"] == k]
            rows[str(k)] = {"mean": common.mean(accs),
                            "min": min(accs), "max": max(accs),
                            "each_seed": accs}
        base = rows[str(delays[0])]["mean"]
        for row in rows.values():
            row["drop_from_k%d" % delays[0]] = base - row["mean"]
        out["depth_%d" % depth] = rows
    return out


def plot(summary, runs, depths, delays, path):
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [max(k, 0.5) for k in delays]  # k = 0 shown at 0.5 on a log axis
    for depth, colour in zip(depths, ["tab:blue", "tab:red", "tab:green",
                                      "tab:purple"]):
        rows = summary["depth_%d" % depth]
        ax.plot(xs, [rows[str(k)]["mean"] for k in delays], marker="o",
                color=colour, label="%d hidden layers" % depth)
        for k, x in zip(delays, xs):
            ax.scatter([x] * len(rows[str(k)]["each_seed"]),
                       rows[str(k)]["each_seed"], color=colour, alpha=0.35,
                       s=12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(k) for k in delays])
    ax.set_xlabel("gradient delay k (steps); k=0: no staleness")
    ax.set_ylabel("final test precision@1")
    ax.set_title("digits MLP, SGD: staleness vs depth (dots: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.staleness",
        description="Test accuracy vs a fixed gradient delay of k steps, "
        "for two network depths (single-process simulation).")
    p.add_argument("--delays", type=common.int_list,
                   default=[0, 1, 2, 4, 8, 16, 32])
    p.add_argument("--depths", type=common.int_list, default=[1, 8],
                   help="hidden layers of each network")
    p.add_argument("--width", type=common.positive_int, default=64)
    p.add_argument("--seeds", type=common.int_list, default=[0, 1, 2])
    p.add_argument("--steps", type=common.positive_int, default=1500)
    p.add_argument("--lr", type=common.positive_float, default=0.05)
    p.add_argument("--batch", type=common.positive_int, default=32)
    p.add_argument("--eval_every", type=common.positive_int, default=100)
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR,
                                                 "staleness"))
    args = p.parse_args(argv)
    if any(k < 0 for k in args.delays):
        p.error("--delays must be >= 0")
    if any(d < 1 for d in args.depths):
        p.error("--depths must be >= 1")
    if any(k >= args.steps for k in args.delays):
        p.error("every delay must be smaller than --steps")
    return args


def main(argv=None):
    args = parse_args(argv)
    from models import digits
    data = digits.load()
    machine = common.machine_start()
    runs = []
    start = time.time()
    for seed in args.seeds:
        for depth in args.depths:
            for k in args.delays:
                r = train_delayed(data, depth, args.width, k, seed,
                                  args.steps, args.lr, args.batch,
                                  args.eval_every)
                runs.append(dict(r, depth=depth, delay=k, seed=seed))
                common.say("depth %d k=%-3d seed %d: test precision@1 %.4f%s"
                           % (depth, k, seed, r["final_top1"],
                              " (diverged)" if r["diverged"] else ""))
    summary = summarize(runs, args.depths, args.delays)
    report = {"benchmark": "staleness",
              "command": " ".join(["python -m benchmarks.staleness"]
                                  + list(argv if argv is not None
                                         else sys.argv[1:])),
              "args": vars(args), "machine": common.machine_end(machine),
              "seconds": round(time.time() - start, 1),
              "summary": summary, "runs": runs}
    path = common.write_report(args.out, report)
    plot(summary, runs, args.depths, args.delays, args.out + ".png")
    for depth in args.depths:
        rows = summary["depth_%d" % depth]
        common.say("depth %d: %s" % (depth, "  ".join(
            "k=%s %.4f" % (k, rows[k]["mean"]) for k in rows)))
    common.say("wrote %s and %s.png" % (path, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
