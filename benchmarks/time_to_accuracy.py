"""Time to accuracy: asynchronous vs synchronous (b = 0) vs synchronous with
backups, same machines, same injected stragglers, one invocation.

  python -m benchmarks.time_to_accuracy [--seeds 0,1,2] [--workers 3]
      [--backups 1] [--adaptive_min K] [--target 0.97] [--train_epochs 6]

Every run is a real local cluster started by the launcher (1 chief, 1 PS,
W worker processes; gRPC over loopback) training small_cnn on scikit-learn's
digits with models.train and its default recipe (Adam 0.003, batch 32 per
worker). The variants share the W workers:
  async     plain ParameterServerStrategy, W workers (--mode=async)
  sync_b0   SyncReplicasWithBackups, N = W, b = 0
  sync_b<b> SyncReplicasWithBackups, N = W - b, b backups
  sync_adaptive  SyncReplicasWithBackups, N = W, quorum_policy adaptive
            (ps_sync.quorum.AdaptiveQuorum): each step's quorum chosen
            between --adaptive_min (default W - the largest b) and W from
            the arrivals the watchdog observed, i.e. a per-step b.
The straggler schedule (default: the one of cluster_specs/local_no_backup.json,
put on the last worker) is the same for every variant of a seed: same
distribution and same RNG seed, so the same sequence of pauses (their
alignment with training differs from run to run). Runs are interleaved
round-robin over seeds.

Evaluation (`--eval`):
  sidecar   (default) the chief saves a checkpoint every
            `--eval_every_examples` applied examples and an evaluator task
            (the launcher's `"evaluator": 1`) evaluates the newest one every
            `--evaluator_poll_s`; a point's time is the checkpoint's write
            time. Training runs as one interval, so no join stops it: a
            paused worker holds back only what waits for it. A sync save
            holds step closes while it writes (every variant's cost, async's
            without the hold); training runs all --train_epochs.
  inline    the chief evaluates every `--eval_every_examples` applied
            examples itself, after a join of every scheduled closure: each
            evaluation waits for a paused worker's closure, in every
            variant, backups included; training stops at the target.

Every variant trains for the same number of epochs of *applied* examples
(an async update applies one batch, a sync update N; the adaptive variant's
budget is counted at N = W, so when it lowers its quorum it applies fewer
examples in as many updates) and is evaluated every `--eval_every_examples`
applied examples (as often per epoch). Measured, per run:
  time_to_target_s  training time (from model.fit's start; includes
                    tracing) at the first evaluation with test precision@1
                    >= target; None if never reached.
  final_top1        test precision@1 after the last update.
  top1_at_budget    test precision@1 of the last evaluation at or before
                    the epoch budget's update count: with backups an
                    interval applies fewer updates than it schedules pushes
                    for, so the training program may run one more interval
                    and end well past the budget (with `--eval sidecar`'s
                    single long interval, 1.6x measured; the program's
                    `--resize_last_interval auto` keeps that interval when
                    a new fit would start slower than it runs).
"""
import argparse
import os
import sys

from benchmarks import common

DEFAULT_STRAGGLERS = os.path.join(common.REPO_ROOT, "cluster_specs",
                                  "local_no_backup.json")
BATCH = 32  # small_cnn's recipe batch per worker (models/recipes.py)


def variants(workers, backups, adaptive_min=None):
    """name -> (mode, N, adaptive minimum or None)."""
    out = {"async": ("async", workers, None),
           "sync_b0": ("sync", workers, None)}
    for b in backups:
        if b > 0:
            out["sync_b%d" % b] = ("sync", workers - b, None)
    if adaptive_min is None:
        adaptive_min = workers - max(backups)
    if adaptive_min < workers:
        out["sync_adaptive"] = ("sync", workers, adaptive_min)
    return out


def admitted_per_update(run_dir):
    """Sync only: mean gradients per applied update and how many updates
    took each count (telemetry)."""
    sizes = [len(s["admitted"]) for s in
             common.read_jsonl(os.path.join(run_dir, "steps.jsonl"))]
    if not sizes:
        return None, {}
    counts = {}
    for k in sizes:
        counts[str(k)] = counts.get(str(k), 0) + 1
    return round(sum(sizes) / len(sizes), 3), counts


def eval_every_updates(mode, n, eval_every_examples):
    per_update = BATCH * (n if mode == "sync" else 1)
    return max(1, round(eval_every_examples / per_update))


def top1_at_budget(curve, budget):
    at = [top1 for _, update, top1 in curve if update <= budget]
    return at[-1] if at else None


def time_to_target(curve, target):
    """The first (elapsed_s, update, top1) point past update 0 at the
    target."""
    for elapsed_s, update, top1 in curve:
        if update > 0 and top1 >= target:
            return elapsed_s
    return None


def first_update_s(run_dir, history):
    """Sync only: from the fit start (the update-0 evaluation's end, just
    before model.fit) to the first applied update (telemetry)."""
    steps = common.read_jsonl(os.path.join(run_dir, "steps.jsonl"))
    start = [h["time"] for h in history if h["update"] == 0]
    if not steps or not start:
        return None
    return min(s["closed_at"] for s in steps) - start[0]


def sidecar_curve(run_dir, history):
    """[(elapsed_s, update, top1)]: the evaluator's points, timed by their
    checkpoint's write from the fit start, then the chief's final one."""
    # A chief evaluation's `elapsed_s` is taken at its start, `time` at its
    # end; the last one's gives model.fit's start.
    last = history[-1]
    fit_start = last["time"] - (last.get("eval_s") or 0.0) - \
        (last["elapsed_s"] or 0.0)
    points = [(h["saved_at"] - fit_start, h["update"], h["top1"])
              for h in common.read_jsonl(os.path.join(run_dir,
                                                      "eval_sidecar.jsonl"))
              if "saved_at" in h]
    points.sort()
    return [(h["elapsed_s"], h["update"], h["top1"]) for h in history[:1]] \
        + points + [(h["elapsed_s"], h["update"], h["top1"])
                    for h in history[1:]]


def run_one(args, name, mode, n, adaptive_min, seed, stragglers, run_root):
    spec = common.base_spec("tta-%s-s%d" % (name, seed), args.workers, n,
                            common.with_seed(stragglers, seed),
                            keepalive_ms=args.grpc_keepalive_ms)
    every = eval_every_updates(mode, n, args.eval_every_examples)
    flags = ["--mode=%s" % mode, "--seed=%d" % seed,
             "--train_epochs=%g" % args.train_epochs,
             "--target_accuracy=%g" % args.target]
    if args.eval == "sidecar":
        spec["cluster"]["evaluator"] = 1
        flags += ["--eval_every_updates=%d" % (1 << 30),
                  "--checkpoint_every_updates=%d" % every,
                  "--evaluator_poll_s=%g" % args.evaluator_poll_s]
    else:
        flags += ["--eval_every_updates=%d" % every,
                  "--checkpoint_every_updates=0"]
    if adaptive_min is not None:
        flags += ["--quorum_policy=adaptive",
                  "--min_replicas_to_aggregate=%d" % adaptive_min]
    r = common.launch(spec, os.path.join(run_root, "%s-s%d" % (name, seed)),
                      flags, args.timeout_s)
    s = r["summary"]
    history = s["eval_history"]
    curve = ([(h["elapsed_s"], h["update"], h["top1"]) for h in history]
             if args.eval == "inline" else sidecar_curve(r["run_dir"],
                                                         history))
    sync = mode == "sync"
    mean_k, k_counts = (admitted_per_update(r["run_dir"]) if sync
                        else (None, {}))
    return {
        "variant": name, "seed": seed, "mode": mode,
        "replicas_to_aggregate": n if sync else 1,
        "min_replicas_to_aggregate": adaptive_min,
        "admitted_per_update_mean": mean_k, "admitted_per_update": k_counts,
        "workers": args.workers, "updates": s["updates"],
        "train_time_s": s["train_time_s"], "wall_s": round(r["wall_s"], 2),
        "time_to_target_s": time_to_target(curve, args.target),
        "final_top1": s["test_accuracy"]["top1"],
        "budget_updates": s["target_updates"],
        "top1_at_budget": top1_at_budget(curve, s["target_updates"]),
        "best_top1": max(c[2] for c in curve),
        "wasted_share": s["wasted_share"],
        "first_update_s": (first_update_s(r["run_dir"], history)
                           if sync else None),
        "pauses": s["pauses"], "grpc_stalls": r["grpc_stalls"],
        "run_dir": r["run_dir"],
        "curve": [list(c) for c in curve],
    }


def aggregate(runs, names, target):
    out = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        times = [r["time_to_target_s"] for r in mine]
        out[name] = {
            "runs": len(mine),
            "reached_target": sum(t is not None for t in times),
            "time_to_target_s_mean": common.mean(times),
            "time_to_target_s_each": times,
            "final_top1_mean": common.mean([r["final_top1"] for r in mine]),
            "final_top1_each": [r["final_top1"] for r in mine],
            "top1_at_budget_mean": common.mean([r["top1_at_budget"]
                                                for r in mine]),
            "admitted_per_update_mean": common.mean(
                [r["admitted_per_update_mean"] for r in mine]),
            "train_time_s_mean": common.mean([r["train_time_s"]
                                              for r in mine]),
            "grpc_stalls": sum(r["grpc_stalls"] for r in mine)}
    return out


def ratios(runs, names):
    """Per seed, time to target of each sync-with-backups variant over
    async's and over sync_b0's, and the adaptive one's over every other
    variant's (seeds where both reached the target)."""
    out = {}
    by = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    for name in names:
        if not name.startswith("sync_") or name == "sync_b0":
            continue
        others = ([o for o in names if o != name]
                  if name == "sync_adaptive" else ["async", "sync_b0"])
        for other in others:
            values = []
            for seed in seeds:
                a, b = by.get((name, seed)), by.get((other, seed))
                if a and b and a["time_to_target_s"] and \
                        b["time_to_target_s"]:
                    values.append(a["time_to_target_s"]
                                  / b["time_to_target_s"])
            out["%s_over_%s_time_to_target" % (name, other)] = {
                "each_seed": values, "mean": common.mean(values)}
    return out


def plot(runs, names, target, path):
    plt = common.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = dict(zip(names, ["tab:red", "tab:blue", "tab:green",
                               "tab:purple", "tab:orange"]))
    for r in runs:
        xs = [c[0] for c in r["curve"]]
        ys = [c[2] for c in r["curve"]]
        ax.plot(xs, ys, color=colours[r["variant"]], alpha=0.7, marker=".",
                label=r["variant"] if r["seed"] == runs[0]["seed"] else None)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0.8, 1.0)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test precision@1")
    ax.set_title("digits, same workers and stragglers")
    ax.legend(fontsize=8, loc="lower right")
    for i, name in enumerate(names):
        times = [r["time_to_target_s"] for r in runs if r["variant"] == name]
        got = [t for t in times if t is not None]
        if got:
            bx.bar(i, sum(got) / len(got), color=colours[name], alpha=0.5)
        bx.scatter([i] * len(got), got, color=colours[name], zorder=3)
        bx.annotate("%d/%d" % (len(got), len(times)), (i, 0),
                    textcoords="offset points", xytext=(-8, 3), fontsize=8)
    bx.set_xticks(range(len(names)))
    bx.set_xticklabels(names)
    bx.set_ylabel("time to %.2f test accuracy (s)" % target)
    bx.set_title("mean (bar) and each seed (dots)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_accuracy",
        description="Time to a target test accuracy: async vs sync b=0 vs "
        "sync with backups on a local cluster with injected stragglers.")
    p.add_argument("--seeds", type=common.int_list, default=[0, 1, 2])
    p.add_argument("--workers", type=common.positive_int, default=3)
    p.add_argument("--backups", type=common.int_list, default=[1],
                   help="b values for the sync-with-backups variants")
    p.add_argument("--adaptive_min", type=common.positive_int, default=None,
                   help="sync_adaptive's smallest quorum (default: workers "
                   "minus the largest of --backups); the variant is left "
                   "out when it equals the workers")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of the variants to run "
                   "(default: all)")
    p.add_argument("--eval", choices=("sidecar", "inline"),
                   default="sidecar", help="see the module docstring")
    p.add_argument("--evaluator_poll_s", type=common.positive_float,
                   default=0.25, help="sidecar: the evaluator's look for a "
                   "new checkpoint")
    p.add_argument("--target", type=common.fraction, default=0.97)
    p.add_argument("--train_epochs", type=common.positive_float, default=6.0)
    p.add_argument("--eval_every_examples", type=common.positive_int,
                   default=640)
    p.add_argument("--stragglers", default=DEFAULT_STRAGGLERS,
                   help="cluster spec whose straggler entries to use")
    p.add_argument("--timeout_s", type=common.positive_float, default=900.0,
                   help="per run")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR,
                                                 "time_to_accuracy"))
    p.add_argument("--run_root", default=os.path.join(common.RUN_ROOT,
                                                      "time_to_accuracy"))
    common.add_keepalive_arg(p)
    args = p.parse_args(argv)
    if any(b < 0 or b >= args.workers for b in args.backups):
        p.error("--backups must be between 0 and workers-1 (%d)"
                % (args.workers - 1))
    if args.adaptive_min is not None and args.adaptive_min > args.workers:
        p.error("--adaptive_min must be between 1 and the workers (%d)"
                % args.workers)
    all_variants = variants(args.workers, args.backups, args.adaptive_min)
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in all_variants]
        if unknown or not chosen:
            p.error("--variants: unknown %s; known: %s" % (
                ", ".join(unknown) or "(none given)",
                ", ".join(all_variants)))
        args.variant_table = {v: all_variants[v] for v in chosen}
    else:
        args.variant_table = all_variants
    args.straggler_entries = common.stragglers_or_usage_error(
        p, args.stragglers, args.workers)
    return args


def main(argv=None):
    args = parse_args(argv)
    common.exit_on_sigterm()
    names = list(args.variant_table)
    machine = common.machine_start()
    runs = []
    for seed, name in common.interleaved(args.seeds, names):
        mode, n, adaptive_min = args.variant_table[name]
        common.say("run %s seed %d ..." % (name, seed))
        try:
            r = run_one(args, name, mode, n, adaptive_min, seed,
                        args.straggler_entries, args.run_root)
        except common.BenchmarkError as e:
            sys.stderr.write("time_to_accuracy: error: %s\n" % e)
            return 1
        runs.append(r)
        common.say("  %s seed %d: target %s at %s s, final %.4f, %d updates "
                   "in %.1f s, %s gradients per update, gRPC stalls %d" % (
                       name, seed, args.target,
                       "%.1f" % r["time_to_target_s"]
                       if r["time_to_target_s"] is not None else "never",
                       r["final_top1"], r["updates"], r["train_time_s"],
                       r["admitted_per_update_mean"] or 1,
                       r["grpc_stalls"]))
    report = {
        "benchmark": "time_to_accuracy", "command": " ".join(
            ["python -m benchmarks.time_to_accuracy"] + list(argv or
                                                              sys.argv[1:])),
        "args": {k: v for k, v in vars(args).items()
                 if k not in ("variant_table", "straggler_entries")},
        "variants": {k: {"mode": m, "replicas_to_aggregate": n,
                         "min_replicas_to_aggregate": lo,
                         "workers": args.workers}
                     for k, (m, n, lo) in args.variant_table.items()},
        "stragglers": args.straggler_entries,
        "machine": common.machine_end(machine),
        "runs": runs, "summary": aggregate(runs, names, args.target),
        "ratios": ratios(runs, names)}
    path = common.write_report(args.out, report)
    plot(runs, names, args.target, args.out + ".png")
    for name, s in report["summary"].items():
        common.say("%-13s reached %d/%d, time to target mean %s s, final "
                   "top1 mean %.4f" % (
                       name, s["reached_target"], s["runs"],
                       "%.1f" % s["time_to_target_s_mean"]
                       if s["time_to_target_s_mean"] is not None else "-",
                       s["final_top1_mean"]))
    for k, v in report["ratios"].items():
        common.say("%s: %s" % (k, "%.2f" % v["mean"] if v["mean"] else "-"))
    common.say("wrote %s and %s.png" % (path, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
