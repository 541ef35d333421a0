"""A process that restores its latest checkpoint, checks it, then saves new
ones in a loop until it is killed (tests/test_checkpoint_crash.py).

    python -m tests.checkpoint_writer <directory> [--saves N]

Every variable holds the update number of its checkpoint, so a torn
checkpoint would show mixed values. Prints one JSON line when it has
restored and one per completed save.
"""
import ps_sync.keras_env  # noqa: F401

import argparse
import json
import sys

import numpy as np
import tensorflow as tf

from ps_sync import checkpointing

NUM_VARIABLES = 6
SIZE = 1 << 21   # 8 MB per variable: a save takes long enough to be hit


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--saves", type=int, default=0,
                        help="stop after this many saves (0: until killed)")
    args = parser.parse_args(argv)
    optimizer = tf.keras.optimizers.SGD(0.1)
    variables = [tf.Variable(tf.zeros([SIZE])) for _ in range(NUM_VARIABLES)]
    checkpoint = tf.train.Checkpoint(optimizer=optimizer, v=variables)
    checkpointer = checkpointing.UpdateCheckpointer(
        checkpoint, args.directory, optimizer, every_n_updates=1,
        max_to_keep=3)
    step = checkpointer.restore_latest() or 0
    values = sorted({float(x) for v in variables
                     for x in np.unique(v.numpy())})
    print(json.dumps({"restored": step, "path": checkpointer.restored,
                      "values": values, "unreadable": checkpointer.unreadable}),
          flush=True)
    saves = 0
    while not args.saves or saves < args.saves:
        step += 1
        optimizer.iterations.assign(step)
        for v in variables:
            v.assign(tf.fill([SIZE], float(step)))
        checkpointer.save()
        saves += 1
        print(json.dumps({"saved": step}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
