"""Command line of the launcher (also the `ps-sync-launch` console script).

Bad input ends with one paragraph on stderr and exit code 2, never a
traceback; a run ends with the chief's exit code.
"""
import ps_sync.keras_env  # noqa: F401  (every entry point, before TensorFlow)

import argparse
import os
import sys

from launch import spec as spec_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPEC = os.path.join(REPO_ROOT, "cluster_specs", "local_default.json")
USAGE_ERROR = 2


def _run_parser():
    parser = argparse.ArgumentParser(
        prog="python -m launch",
        description="Run a cluster spec on this machine: every task its own "
        "process, the chief runs the training program, the launcher exits "
        "with the chief's code. Flags after `--` go to the program. Other "
        "commands: `render-k8s SPEC` (Kubeflow TFJob), `validate SPEC`.")
    parser.add_argument("spec", nargs="?", default=DEFAULT_SPEC,
                        help="cluster spec JSON (default: %(default)s)")
    parser.add_argument("--run-dir", help="run directory (default: "
                        "<local.run_root>/<name>-<time>-<pid>)")
    parser.add_argument("--program", help="command line replacing the spec's "
                        "program.command, e.g. 'python -m models.train'")
    parser.add_argument("--quiet", action="store_true",
                        help="keep task output in the run directory only")
    return parser


def _k8s_parser():
    parser = argparse.ArgumentParser(
        prog="python -m launch render-k8s",
        description="Write a Kubeflow TFJob (kubeflow.org/v1) manifest for a "
        "spec. Flags after `--` go to the program.")
    parser.add_argument("spec")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    parser.add_argument("--image", help="container image (default: "
                        "kubernetes.image of the spec)")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    try:
        if argv[:1] == ["render-k8s"]:
            return _render_k8s(_k8s_parser().parse_args(argv[1:]), extra)
        if argv[:1] == ["validate"]:
            for path in argv[1:] or [DEFAULT_SPEC]:
                spec = spec_lib.load(path)
                print("%s: valid (%d ps, %d workers, N=%d, b=%d)" % (
                    path, spec.counts["ps"], spec.counts["worker"],
                    spec.replicas_to_aggregate, spec.backup_workers))
            return 0
        args = _run_parser().parse_args(argv)
        spec = spec_lib.load(args.spec)
        from launch import local
        return local.run(spec, extra, run_dir=args.run_dir,
                         program=args.program, echo=not args.quiet)
    except spec_lib.SpecError as e:
        print("launch: error: %s" % e, file=sys.stderr, flush=True)
        return USAGE_ERROR


def _render_k8s(args, extra):
    from launch import k8s
    spec = spec_lib.load(args.spec)
    text = k8s.dumps(k8s.render_tfjob(spec, extra, image=args.image))
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
