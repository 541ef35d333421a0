"""A tiny real ParameterServerStrategy training program, the chief of the
cluster tests (until models/train.py exists). Run as a program:

    python -m tests.test_launch_program --steps=4 [--sync] [--exit_code=3]

It reads TF_CONFIG, trains a one-layer model with `model.fit`, prints one
line "RESULT {json}" and writes the same JSON to
$PS_SYNC_RUN_DIR/chief-result-<attempt>.json. The tests at the bottom only
check its flag handling (cheap, no TensorFlow).
"""
import argparse
import json
import os
import sys
import time


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="test_launch_program")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--replicas_to_aggregate", type=int, default=None)
    parser.add_argument("--total_num_replicas", type=int, default=None)
    parser.add_argument("--sync", action="store_true",
                        help="wrap SGD in SyncReplicasWithBackups")
    parser.add_argument("--exit_code", type=int, default=0,
                        help="exit with this code after training")
    parser.add_argument("--fail_before_training", action="store_true")
    parser.add_argument("--block_attempts", type=int, default=0,
                        help="on attempts 1..N, wait forever after the work "
                             "(restart tests: the launcher must kill it)")
    parser.add_argument("--sleep_s", type=float, default=0.0,
                        help="sleep instead of training (no TensorFlow)")
    return parser.parse_args(argv)


def _attempt(run_dir):
    """Count chief starts in the run directory (1 on the first start)."""
    path = os.path.join(run_dir, "chief-attempts.txt")
    with open(path, "a") as f:
        f.write("%d\n" % os.getpid())
    with open(path) as f:
        return len(f.read().split())


def train(args):
    import ps_sync.keras_env  # noqa: F401
    import numpy as np
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    with strategy.scope():
        model = tf.keras.Sequential(
            [tf.keras.layers.Dense(1, input_shape=(4,))])
        optimizer = tf.keras.optimizers.SGD(0.05)
        if args.sync:
            from ps_sync.optimizer import SyncReplicasWithBackups
            optimizer = SyncReplicasWithBackups(
                optimizer, replicas_to_aggregate=args.replicas_to_aggregate,
                total_num_replicas=args.total_num_replicas)
        model.compile(optimizer, "mse")
    x = np.random.RandomState(0).randn(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def dataset_fn(_):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                        epochs=1, steps_per_epoch=args.steps, verbose=0)
    return {"loss": float(history.history["loss"][-1]),
            "workers": len(resolver.cluster_spec().as_dict()["worker"])}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = os.environ.get("PS_SYNC_RUN_DIR", ".")
    attempt = _attempt(run_dir)
    print("chief attempt %d, flags %s" % (attempt, sys.argv[1:]), flush=True)
    if args.fail_before_training:
        print("failing on purpose with code %d" % args.exit_code, flush=True)
        return args.exit_code
    if args.sleep_s:
        time.sleep(args.sleep_s)
        result = {}
    else:
        result = train(args)
    result.update(attempt=attempt, replicas_to_aggregate=args.replicas_to_aggregate,
                  total_num_replicas=args.total_num_replicas,
                  tf_config=json.loads(os.environ.get("TF_CONFIG", "{}")),
                  run_dir=os.environ.get("PS_SYNC_RUN_DIR"),
                  env={k: os.environ.get(k) for k in (
                      "GRPC_FAIL_FAST", "TF_GRPC_DEFAULT_OPTIONS",
                      "PS_SYNC_TEST_VAR")})
    with open(os.path.join(run_dir, "chief-result-%d.json" % attempt), "w") as f:
        json.dump(result, f)
    print("RESULT " + json.dumps(result), flush=True)
    if attempt <= args.block_attempts:
        print("blocking until killed", flush=True)
        while True:
            time.sleep(60)
    return args.exit_code


def test_parse_args_takes_sync_flags():
    args = parse_args(["--replicas_to_aggregate=2", "--total_num_replicas=3"])
    assert (args.replicas_to_aggregate, args.total_num_replicas) == (2, 3)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Coordinator threads of ParameterServerStrategy never end: do not join.
    os._exit(code)
