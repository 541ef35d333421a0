"""Inception-v3 at reduced resolution on a small local cluster: steps per
second and the sync protocol's share of a worker's step time.

  python -m benchmarks.inception_small [--workers 3] [--train_pushes 60]

The paper-scale path run for real: models.train with `inception_v3_small`
(the Inception-v3 graph at 75x75 with a quarter of the filters, auxiliary
head, the paper-era RMSProp recipe with a moving average of the weights,
batch 32 per worker) on generated ImageNet TFRecord shards in
tensorflow/models' format (models/imagenet_fixture.py: real JPEGs decoded
and preprocessed by the Inception pipeline), under the launcher: 1 chief,
1 PS (`--num_ps`), W worker processes, no injected stragglers. Variants on
the same W workers, one after the other in this invocation:
  async    plain ParameterServerStrategy
  sync_b0  SyncReplicasWithBackups, N = W
  sync_b1  N = W - 1, one backup
Each trains about `--train_pushes` worker steps (sync: pushes / N updates),
evaluating every `--eval_every` updates' worth of that (cheap: 8 images).

Measured:
- updates/s and worker steps/s in steady state: over the evaluation
  intervals after the first one (the first holds the tracing), from the
  chief's eval history (update counts at interval ends); for sync, worker
  steps are the pushes of telemetry over the same window, otherwise
  updates = pushes.
- sync only, from pushes.jsonl, per push after each worker's first
  `--warmup_pushes`: cycle = ready_at of the worker's next push - ready_at
  of this one; compute = computed_at - ready_at (input, forward, backward,
  closure dispatch); push = arrived_at - computed_at (gradient to the PS and
  the critical section: admission, accumulate, apply at the N-th);
  wait = next ready_at - arrived_at (waiting for the step to close, reading
  the new version). The protocol's share is (push + wait) / cycle. Waiting
  for the slowest of the N is part of synchronous training, not overhead
  alone; async's equivalent share is not observable (no telemetry).
`--model small_cnn --image_size 16` runs the same pipeline with a network
that traces in seconds (the smoke test does; tracing Inception alone takes
minutes on 2 shared cores).
`compute_s_samples` in the JSON is this run's measured compute-time
distribution: `benchmarks.paper_scale_sim --measured` resamples it for the
paper's 50/100/200-worker configurations.
"""
from benchmarks import common  # first: pins Keras 2 before TensorFlow

import argparse
import os
import statistics
import sys


def write_fixture(data_dir, num_train):
    from models import imagenet_fixture
    if not os.path.exists(os.path.join(data_dir, "train-00000-of-00003")):
        imagenet_fixture.write_tfrecords(data_dir, num_train=num_train,
                                         num_validation=8)


def steady_rates(history, run_dir, sync):
    """(updates/s, worker steps/s) over the eval intervals after the first."""
    points = [h for h in history if h["update"] > 0]
    if len(points) < 2:
        return None, None
    (u0, t0), (u1, t1) = ((points[0]["update"], points[0]["time"]),
                          (points[-1]["update"], points[-1]["time"]))
    if t1 <= t0:
        return None, None
    updates_per_s = (u1 - u0) / (t1 - t0)
    if not sync:
        return updates_per_s, updates_per_s
    pushes = common.read_jsonl(os.path.join(run_dir, "pushes.jsonl"))
    inside = sum(1 for p in pushes if t0 < p["arrived_at"] <= t1)
    return updates_per_s, inside / (t1 - t0)


def protocol_share(run_dir, warmup):
    pushes = common.read_jsonl(os.path.join(run_dir, "pushes.jsonl"))
    by_worker = {}
    for p in sorted(pushes, key=lambda p: p["arrived_at"]):
        by_worker.setdefault(p["worker"], []).append(p)
    compute, push, wait = [], [], []
    for records in by_worker.values():
        for p, nxt in zip(records[warmup:], records[warmup + 1:]):
            if p["ready_at"] <= 0 or nxt["ready_at"] < p["arrived_at"]:
                continue
            compute.append(p["computed_at"] - p["ready_at"])
            push.append(p["arrived_at"] - p["computed_at"])
            wait.append(nxt["ready_at"] - p["arrived_at"])
    if not compute:
        return None
    total = sum(compute) + sum(push) + sum(wait)
    return {"cycles": len(compute),
            "compute_s_mean": common.mean(compute),
            "push_s_mean": common.mean(push),
            "wait_s_mean": common.mean(wait),
            # A worker's first compute after an evaluation interval holds
            # the gap between two intervals (seconds): medians leave it out.
            "compute_s_median": statistics.median(compute),
            "push_s_median": statistics.median(push),
            "wait_s_median": statistics.median(wait),
            "cycle_s_mean": total / len(compute),
            "compute_share": sum(compute) / total,
            "push_share": sum(push) / total,
            "wait_share": sum(wait) / total,
            "protocol_share": (sum(push) + sum(wait)) / total,
            "compute_s_samples": [round(c, 4) for c in compute]}


def run_variant(args, name, mode, n):
    updates = max(2, args.train_pushes // (n if mode == "sync" else 1))
    every = max(1, args.eval_every // (n if mode == "sync" else 1))
    spec = common.base_spec("inception-%s" % name, args.workers, n,
                            ps=args.num_ps,
                            keepalive_ms=args.grpc_keepalive_ms)
    flags = ["--mode=%s" % mode, "--model=%s" % args.model,
             "--dataset=imagenet_tfrecord", "--data_dir=%s" % args.data_dir,
             "--train_updates=%d" % updates,
             "--eval_every_updates=%d" % every,
             "--checkpoint_every_updates=0", "--eval_batch_size=8"]
    if args.image_size:
        flags.append("--image_size=%d" % args.image_size)
    r = common.launch(spec, os.path.join(args.run_root, name), flags,
                      args.timeout_s)
    s = r["summary"]
    sync = mode == "sync"
    ups, pps = steady_rates(s["eval_history"], r["run_dir"], sync)
    out = {"variant": name, "mode": mode, "model": args.model,
           "replicas_to_aggregate": n if sync else 1, "workers": args.workers,
           "num_ps": args.num_ps,
           "updates": s["updates"], "train_time_s": s["train_time_s"],
           "program_time_s": s["program_time_s"],
           "wall_s": round(r["wall_s"], 1),
           "first_interval_s": next((h["elapsed_s"] for h in s["eval_history"]
                                     if h["update"] > 0), None),
           "updates_per_s": ups, "worker_steps_per_s": pps,
           "wasted_share": s["wasted_share"],
           "final_top1": s["test_accuracy"]["top1"],
           "grpc_stalls": r["grpc_stalls"], "run_dir": r["run_dir"],
           "protocol": (protocol_share(r["run_dir"], args.warmup_pushes)
                        if sync else None)}
    return out


def plot(results, path):
    plt = common.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["variant"] for r in results]
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [r["updates_per_s"] or 0 for r in results],
           0.4, label="updates/s")
    ax.bar([i + 0.2 for i in x], [r["worker_steps_per_s"] or 0
                                  for r in results], 0.4,
           label="worker steps/s")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names)
    ax.set_title("%s, steady state" % results[0]["model"])
    ax.legend(fontsize=8)
    sync = [r for r in results if r["protocol"]]
    bottom = [0.0] * len(sync)
    for part, colour in (("compute", "tab:blue"), ("push", "tab:orange"),
                         ("wait", "tab:red")):
        values = [r["protocol"][part + "_s_mean"] for r in sync]
        bx.bar(range(len(sync)), values, bottom=bottom, color=colour,
               label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    bx.set_xticks(range(len(sync)))
    bx.set_xticklabels([r["variant"] for r in sync])
    bx.set_ylabel("seconds per worker step (mean)")
    bx.set_title("sync: where a worker's step goes")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.inception_small",
        description="inception_v3_small on a local cluster: steps/s and the "
        "sync protocol's share of step time.")
    p.add_argument("--workers", type=common.positive_int, default=3)
    p.add_argument("--variants", default="async,sync_b0,sync_b1")
    p.add_argument("--num_ps", type=common.positive_int, default=1,
                   help="parameter servers (the variables spread over them)")
    p.add_argument("--model", default="inception_v3_small",
                   choices=["inception_v3_small", "inception_v3",
                            "small_cnn"])
    p.add_argument("--image_size", type=common.positive_int, default=None,
                   help="image side (default: the model's input size)")
    p.add_argument("--train_pushes", type=common.positive_int, default=60)
    p.add_argument("--eval_every", type=common.positive_int, default=15,
                   help="worker steps between evaluations")
    p.add_argument("--warmup_pushes", type=int, default=2)
    p.add_argument("--num_train_images", type=common.positive_int,
                   default=64)
    p.add_argument("--timeout_s", type=common.positive_float, default=900.0)
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR,
                                                 "inception_small"))
    p.add_argument("--run_root", default=os.path.join(common.RUN_ROOT,
                                                      "inception_small"))
    common.add_keepalive_arg(p)
    args = p.parse_args(argv)
    table = {"async": ("async", args.workers),
             "sync_b0": ("sync", args.workers),
             "sync_b1": ("sync", args.workers - 1)}
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in table]
    if unknown or not chosen:
        p.error("--variants: unknown %s; known: %s" % (
            ", ".join(unknown) or "(none given)", ", ".join(table)))
    if "sync_b1" in chosen and args.workers < 2:
        p.error("sync_b1 needs --workers >= 2")
    if args.warmup_pushes < 0:
        p.error("--warmup_pushes must be >= 0")
    args.variant_table = {v: table[v] for v in chosen}
    args.data_dir = os.path.join(args.run_root, "imagenet_fixture")
    return args


def main(argv=None):
    args = parse_args(argv)
    common.exit_on_sigterm()
    machine = common.machine_start()
    write_fixture(args.data_dir, args.num_train_images)
    results = []
    try:
        for name, (mode, n) in args.variant_table.items():
            common.say("run %s ..." % name)
            r = run_variant(args, name, mode, n)
            results.append(r)
            share = r["protocol"]["protocol_share"] if r["protocol"] else None
            common.say("  %s: %s updates/s, %s worker steps/s, protocol "
                       "share %s, first interval %.0f s, gRPC stalls %d" % (
                           name, _f(r["updates_per_s"]),
                           _f(r["worker_steps_per_s"]), _f(share),
                           r["first_interval_s"] or 0, r["grpc_stalls"]))
    except common.BenchmarkError as e:
        sys.stderr.write("inception_small: error: %s\n" % e)
        return 1
    by = {r["variant"]: r for r in results}
    ratios = {}
    if "async" in by and by["async"]["worker_steps_per_s"]:
        for name in ("sync_b0", "sync_b1"):
            if name in by and by[name]["worker_steps_per_s"]:
                ratios["%s_over_async_worker_steps" % name] = (
                    by[name]["worker_steps_per_s"]
                    / by["async"]["worker_steps_per_s"])
    report = {"benchmark": "inception_small",
              "command": " ".join(["python -m benchmarks.inception_small"]
                                  + list(argv if argv is not None
                                         else sys.argv[1:])),
              "args": {k: v for k, v in vars(args).items()
                       if k != "variant_table"},
              "machine": common.machine_end(machine), "results": results,
              "ratios": ratios}
    path = common.write_report(args.out, report)
    plot(results, args.out + ".png")
    for k, v in ratios.items():
        common.say("%s: %.2f" % (k, v))
    common.say("wrote %s and %s.png" % (path, args.out))
    return 0


def _f(x):
    return "-" if x is None else "%.3f" % x


if __name__ == "__main__":
    sys.exit(main())
