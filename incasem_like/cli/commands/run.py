"""`incasem-like run`: run a pipeline file's stages in order, skipping the finished ones."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a pipeline file (YAML): its stages in order, skipping finished ones",
        description=textwrap.dedent(
            """\
            Run the stages a pipeline file lists (see pipelines/): each is one incasem-like command's step, its
            fields named as in docs/usage/pipelines.md, run as the command runs it. The whole file is checked
            first (commands, fields, variables, inputs); nothing runs if anything is wrong. Stages whose outputs
            are complete and record this stage's step are skipped (also when the command was typed by hand),
            stages left incomplete resume, and a stage reruns (replacing its outputs) when --force names it, when
            its outputs record another step (changed fields, checkpoint or config) or none, or when an earlier
            stage that writes its inputs reruns. A failing
            stage stops the run; rerunning resumes from it. At the end a table summarises every stage, followed
            by the neuroglancer link of the view stage (with --serve its container is served until Ctrl-C)."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like run pipelines/predict_cell.yaml --set tiffs=cell_6/raw --set container=cell_6.zarr
              incasem-like run pipelines/predict_cell.yaml --set tiffs=cell_6/raw --set er_checkpoint=er.pt --serve
              incasem-like run pipelines/prepare_training.yaml --set raw_tiffs=cell_6/raw \\
                  --set labels_tiffs=cell_6/mito --dry-run
              incasem-like run pipelines/finetune_cell.yaml --set raw_tiffs=new/raw --set labels_tiffs=new/mito \\
                  --force finetune"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("pipeline", metavar="PIPELINE.yaml", help="pipeline file, e.g. pipelines/predict_cell.yaml")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a variable of the pipeline (repeatable); VALUE is read as YAML: 4, [5, 5, 5], a/path; "
        "an empty VALUE unsets it",
    )
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="run STAGE again, replacing its outputs (and so every stage that reads them); repeatable",
    )
    parser.add_argument("--dry-run", action="store_true", help="check the pipeline and show what would run")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="after the run, serve the view stage's container to neuroglancer until Ctrl-C",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars in the stages")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.core.errors import UserError
    from incasem_like.workflow.pipeline import load_pipeline, plan, run_pipeline

    pipeline = load_pipeline(args.pipeline, args.assignments)
    plans = plan(pipeline, args.force, args.quiet)
    if args.serve and not any(item.stage.command == "view" and item.action == "run" for item in plans):
        raise UserError(f"--serve: {args.pipeline} has no view stage that runs; add one (command: view)")
    run_pipeline(pipeline, plans, dry_run=args.dry_run, serve=args.serve)
