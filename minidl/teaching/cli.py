"""The teaching subcommands of ``minidl``: ``explain``, ``museum`` and ``grade``.

:func:`add_teaching_commands` registers them on the main parser's subcommands; each handler returns
the exit status (0 success, 1 a failure it reports).
"""

import os
import shutil
import sys

from minidl.cli import PRESETS, add_common, positive_int


def command_explain(args):
    from minidl import presets
    from minidl.teaching.explain import explain_model

    model = presets.PRESETS[args.model](tuple(args.input_shape), args.classes)
    print(explain_model(model, args.batch_size, args.layer))
    return 0


def command_museum(args):
    from minidl.teaching.museum import run_museum

    results = run_museum()
    escaped = [result.exhibit.title for result in results if not result.caught]
    failing = [result.exhibit.title for result in results if not result.right_passes]
    for title in escaped:
        print(f"ESCAPED: {title}", file=sys.stderr)
    for title in failing:
        print(f"the correct version FAILS its test: {title}", file=sys.stderr)
    return 1 if escaped or failing else 0


def command_grade(args):
    from minidl.teaching import grader, scaffold

    if args.new:
        if os.path.exists(args.file):
            raise ValueError(f"{args.file} exists; give a new file name for the scaffold")
        shutil.copyfile(scaffold.__file__, args.file)
        print(f"wrote the exercises to {args.file}; fill in forward and backward, then: minidl grade {args.file}")
        return 0
    results = grader.grade_file(args.file)
    wrong = sum(not finding.passed for findings in results.values() for finding in findings)
    print(f"{len(results)} exercises graded: {'all right' if not wrong else f'{wrong} things to fix'}")
    return 1 if wrong else 0


def add_teaching_commands(commands):
    """Add ``explain``, ``museum`` and ``grade`` to ``commands`` (an argparse subparsers object)."""
    explain = commands.add_parser("explain", help="each layer's equations with live shapes, FLOPs, bytes, passes",
                                  description="Print, per layer of a preset, the forward and backward "
                                              "equations with the shapes of one batch, their FLOPs and "
                                              "bytes moved, and the planner passes that apply.")
    explain.add_argument("--model", choices=PRESETS, default="seed-cnn", help="default seed-cnn")
    explain.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    explain.add_argument("--layer", metavar="NAME", help="only this layer (e.g. conv2d_1)")
    explain.add_argument("--input-shape", type=positive_int, nargs=3, default=(28, 28, 1),
                         metavar=("H", "W", "C"), help="default 28 28 1")
    explain.add_argument("--classes", type=positive_int, default=10, help="default 10")
    add_common(explain)
    explain.set_defaults(run=command_explain)

    museum = commands.add_parser("museum", help="known-wrong backward passes, each caught by a numerical test",
                                 description="Run every exhibit of the bug museum: the wrong variant must "
                                             "fail its test and the correct one pass; exit 1 otherwise.")
    add_common(museum)
    museum.set_defaults(run=command_museum)

    grade = commands.add_parser("grade", help="grade your forward/backward exercises",
                                description="Run the exercise classes defined in FILE (it is imported, so "
                                            "its code runs) through shape tests and gradient checks and "
                                            "say what is wrong; exit 1 if anything is.")
    grade.add_argument("file", metavar="FILE", help="your copy of the exercises (a .py file)")
    grade.add_argument("--new", action="store_true", help="write the empty exercises to FILE instead")
    add_common(grade)
    grade.set_defaults(run=command_grade)
