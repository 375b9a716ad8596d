"""`mortgagellm <command>`: a thin map from sub-command to stage function.

    mortgagellm run CONFIG [--from STAGE] [--to STAGE] [--force] [--section.key VALUE ...]
    mortgagellm <stage> CONFIG [--force] [--section.key VALUE ...]
    mortgagellm evaluate CONFIG --model DIR|VERSION   evaluate one model into its registry entry
    mortgagellm config CONFIG [--section.key VALUE ...]     print the resolved recipe
    mortgagellm report CONFIG [--output DIR]           run up to evaluate (and at run.repeat_seeds),
                                                       write report.md, results.json + plots
    mortgagellm submit CONFIG [--stages STAGE ...] [--address URL]   run it as a Ray job
    mortgagellm serve CONFIG [--demo]                  the OpenAI-compatible app on serve.host:port
    mortgagellm deploy CONFIG EXPERT VERSION|DIR       switch an expert's model in place
    mortgagellm rollback CONFIG EXPERT                 back to its previous version
    mortgagellm audit verify PATH [--key-file F]       check the audit log's HMAC chain
    mortgagellm chat [--url URL] [-m TEXT]              talk to a served endpoint (streams)

Imports nothing heavy at module level, so --help is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from mortgagellm import __version__
from mortgagellm.stages import STAGES

EPILOG = ("Any recipe field can be overridden with a dotted flag, e.g. "
          "--bootstrap.preset tiny or --pretrain.deepspeed.lr=3e-4.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="mortgagellm", epilog=EPILOG,
        description="Train, audit and serve a mortgage-domain LLM (MortgageLLM recipe) on Ray.")
    parser.add_argument("--version", action="version", version=f"mortgagellm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the recipe's stages in order", epilog=EPILOG)
    run.add_argument("config", help="recipe YAML, e.g. configs/cpu-demo.yaml")
    run.add_argument("--from", dest="first", choices=STAGES, help="first stage to run")
    run.add_argument("--to", dest="last", choices=STAGES, help="last stage to run")
    run.add_argument("--force", action="store_true", help="re-run even if manifests match")
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run only the {stage} stage", epilog=EPILOG)
        p.add_argument("config", help="recipe YAML")
        p.add_argument("--force", action="store_true", help="re-run even if the manifest matches")
        if stage == "evaluate":
            p.add_argument("--model", metavar="DIR|VERSION", help="evaluate only this model (a "
                           "directory or a registry version), print the table and store the "
                           "results in its registry entry")
    show = sub.add_parser("config", help="print the resolved recipe as YAML", epilog=EPILOG)
    show.add_argument("config", help="recipe YAML")
    report = sub.add_parser("report", epilog=EPILOG, help="run the recipe up to evaluate, "
                            "then write report.md and its plots from the manifests")
    report.add_argument("config", help="recipe YAML")
    report.add_argument("--output", help="report directory (default <output_dir>/report)")
    job = sub.add_parser("submit", epilog=EPILOG,
                         help="run the recipe as a Ray job on an existing cluster (RAY_ADDRESS)")
    job.add_argument("config", help="recipe YAML, e.g. configs/llama3-8b-a100.yaml")
    job.add_argument("--stages", nargs="+", choices=STAGES, metavar="STAGE",
                     help=f"consecutive stages to run (default: all): {', '.join(STAGES)}")
    job.add_argument("--address", help="dashboard URL, e.g. http://HEAD:8265 (default RAY_ADDRESS)")
    job.add_argument("--force", action="store_true", help="re-run even if manifests match")
    job.add_argument("--no-wait", action="store_true", help="submit, print the job id, return")
    add_serve_commands(sub)
    return parser


def add_serve_commands(sub: Any) -> None:
    """serve, deploy, rollback (recipe commands) and `audit verify` (no recipe)."""
    serve = sub.add_parser("serve", epilog=EPILOG,
                           help="serve the router and both experts on serve.host:serve.port")
    serve.add_argument("config", help="recipe YAML, e.g. configs/cpu-demo.yaml")
    serve.add_argument("--demo", action="store_true", help="send one structured and one "
                       "conversational request, print the answers and routes, stop")
    deploy = sub.add_parser("deploy", epilog=EPILOG,
                            help="point an expert at a registered model version, in place")
    deploy.add_argument("config", help="recipe YAML")
    deploy.add_argument("expert", choices=("structured", "conversational"))
    deploy.add_argument("version", help="registry version (8+ hex characters of it) or a model "
                        "directory to register first")
    rollback = sub.add_parser("rollback", epilog=EPILOG,
                              help="return an expert to its previously deployed version")
    rollback.add_argument("config", help="recipe YAML")
    rollback.add_argument("expert", choices=("structured", "conversational"))
    audit = sub.add_parser("audit", help="audit-log tools")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check the hash chain; exit 1 naming the first "
                                "altered or missing record")
    verify.add_argument("path", help="audit log directory or one of its files")
    verify.add_argument("--key-file", help="the audit HMAC key (default: "
                        "$MORTGAGELLM_AUDIT_KEY, else <path>/../audit.key)")
    chat = sub.add_parser("chat", help="chat with a served endpoint: streams each answer and "
                          "shows the route, confidence and expert version")
    chat.add_argument("--url", default="http://127.0.0.1:8000/v1",
                      help="the endpoint's OpenAI base URL (default %(default)s)")
    chat.add_argument("--model", default="mortgagellm", help="mortgagellm (the router picks), "
                      "mortgagellm-structured or mortgagellm-chat")
    chat.add_argument("--max-tokens", type=int, default=128, help="answer length cap")
    chat.add_argument("-m", "--message", help="ask this one question, print the answer, exit")
    chat.add_argument("--key-env", default="MORTGAGELLM_API_KEY",
                      help="environment variable holding the API key (default %(default)s)")


def split_overrides(extra: list[str]) -> list[str]:
    """Turn ['--a.b', '3', '--c.d=x'] into ['a.b=3', 'c.d=x']; reject anything else."""
    out, i = [], 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--") or "." not in flag.split("=", 1)[0]:
            raise SystemExit(f"mortgagellm: unrecognised argument {flag!r} ({EPILOG})")
        if "=" in flag:
            out.append(flag[2:])
            i += 1
        elif i + 1 < len(extra):
            out.append(f"{flag[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise SystemExit(f"mortgagellm: override {flag} needs a value")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mortgagellm` command."""
    args, extra = build_parser().parse_known_args(argv)
    # Loading and writing a small model's weights draws a progress bar per file, here and in
    # every Ray worker (they inherit this environment): noise between the lines that matter.
    # Read by huggingface_hub at import; HF_HUB_DISABLE_PROGRESS_BARS=0 brings them back.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mortgagellm.config import ConfigError, load_recipe

    if args.command == "chat":
        from mortgagellm.serve import chat

        if extra:
            raise SystemExit(f"mortgagellm chat: unrecognised arguments {' '.join(extra)}")
        return chat.main(args.url, args.model, args.max_tokens, args.message, args.key_env,
                         sys.stdin, sys.stdout, sys.stderr)
    if args.command == "audit":
        from pathlib import Path

        from mortgagellm.config import AuditSettings
        from mortgagellm.serve.audit import load_key, verify

        logs = Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent
        try:
            key = load_key(AuditSettings(key_file=args.key_file or str(logs.parent / "audit.key")),
                           logs)
        except (FileNotFoundError, ValueError) as err:
            print(f"mortgagellm: {err}", file=sys.stderr)
            return 2
        report = verify(args.path, key)
        print(f"{args.path}: {report.records} records intact" if report.ok else
              f"{args.path}: {report.problem} ({report.records} records intact before it)")
        return 0 if report.ok else 1
    overrides = split_overrides(extra)
    try:
        recipe = load_recipe(args.config, overrides)
    except ConfigError as err:
        print(f"mortgagellm: {err}", file=sys.stderr)
        return 2
    if args.command == "submit":
        from mortgagellm.cluster.submit import SubmitError, submit

        try:
            return submit(args.config, recipe, overrides, address=args.address,
                          stages=args.stages, force=args.force, wait=not args.no_wait)
        except SubmitError as err:
            print(f"mortgagellm: {err}", file=sys.stderr)
            return 2
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.command in ("serve", "deploy", "rollback"):
        from mortgagellm.serve import ops

        if args.command == "serve":
            return ops.serve(recipe, args.config, overrides, demo=args.demo)
        if args.command == "deploy":
            return ops.deploy(recipe, args.config, overrides, args.expert, args.version)
        return ops.rollback(recipe, args.config, overrides, args.expert)
    from mortgagellm.pipelines import recipe as pipeline

    if args.command == "report":
        from mortgagellm.pipelines.report import build

        from mortgagellm import headlines
        from mortgagellm.manifest import now

        started, _ = now()

        def done(job: Any, manifest: Any, seconds: float) -> None:
            line = headlines.stage_line(manifest, manifest.started_at < started)
            print(f"[{job.name}, {seconds:.0f} s] {line}", flush=True)

        # the run, run.repeat_seeds and sft/dpo.compare, side by side as cores allow
        pipeline.run_plan(recipe, pipeline.plan(recipe), on_done=done)
        print(build(recipe, args.config, args.output))
        return 0
    if args.command == "run":
        return run(recipe, args.config, pipeline.select(args.first, args.last), args.force)
    if args.command == "evaluate" and args.model:
        from mortgagellm.pipelines.evaluate import evaluate_registered, table

        print(table(evaluate_registered(recipe, args.model)["tasks"]))
        return 0
    print(summary(pipeline.run_stage(recipe, args.command, force=args.force)))
    return 0


def run(recipe: Any, config: str, stages: list[str], force: bool) -> int:
    """`mortgagellm run`: each stage's time and headline as it ends (a later failure never hides
    what the earlier ones measured), then the closing table and what to try next. The full
    metric dump goes to <output_dir>/run.log, beside the manifests that hold it too."""
    import time

    from mortgagellm import headlines
    from mortgagellm.manifest import now
    from mortgagellm.pipelines import recipe as pipeline

    dump = _metrics_log(recipe.run.output_dir)
    rows = []
    started, t0 = now()

    def done(manifest: Any, seconds: float) -> None:
        skipped = manifest.started_at < started
        rows.append((manifest, skipped, seconds))
        print(headlines.stage_line(manifest, skipped), flush=True)
        dump.info("%s", summary(manifest))

    pipeline.run_recipe(recipe, stages[0], stages[-1], force, on_done=done)
    rows.sort(key=lambda row: stages.index(row[0].stage))
    print(headlines.table(rows, time.monotonic() - t0))
    print(f"\nFull metrics: each stage's manifest.json, and {recipe.run.output_dir}/run.log."
          f"\nNext: mortgagellm serve {config}          # the OpenAI-compatible API on "
          f"{recipe.serve.host}:{recipe.serve.port}"
          f"\n      mortgagellm serve {config} --demo   # ask it held-out questions, then stop"
          f"\n      mortgagellm report {config}         # report.md, results.json and plots",
          flush=True)
    return 0


def _metrics_log(output_dir: str) -> logging.Logger:
    """A logger that writes only to <output_dir>/run.log (not the terminal); for a remote
    output_dir (s3://...) it writes nowhere, the manifests still hold every number."""
    dump = logging.getLogger("mortgagellm.run.metrics")
    dump.propagate = False
    for old in list(dump.handlers):  # a second run in this process (tests) logs to its own dir
        dump.removeHandler(old)
        old.close()
    if "://" not in output_dir:
        from pathlib import Path

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(output_dir) / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        dump.addHandler(handler)
    dump.setLevel(logging.INFO)
    return dump


def summary(manifest: Any) -> str:
    """A few readable lines: the stage's outputs and its headline numbers."""
    lines = [f"[{manifest.stage}] {manifest.started_at} ({manifest.duration_s:.1f} s)"]
    lines += [f"  {name}: {entry['uri']}" for name, entry in manifest.outputs.items()]
    for key, value in _flat(manifest.metrics):
        lines.append(f"  {key} = {value}")
    return "\n".join(lines)


def _flat(metrics: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str, bool)):
            items.append((f"{prefix}{key}", round(value, 4) if isinstance(value, float) else value))
    return items


if __name__ == "__main__":
    sys.exit(main())
