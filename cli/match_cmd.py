"""`icx match`: solve a replayable problem file offline and print the assignment, the
per-job explanations, the objective and its bound. Calls `matcher` directly; nothing
here reaches the network."""

from __future__ import annotations

import argparse

from cli._output import EXIT_OK, command, print_json, print_table
from core.money import CURRENCY, MINOR_PER_MAJOR

# matcher.SOLVERS, written out: importing the matcher here would load it (and numpy) for
# every command. tests/test_cli.py checks the two agree.
SOLVERS = ("auto", "greedy", "flow", "cpsat")


@command
def _match(args: argparse.Namespace) -> int:
    from matcher import load_problem_file, make_matcher, solution_to_json

    problem = load_problem_file(args.problem)
    solution = make_matcher(args.solver, time_limit_s=args.time_limit).solve(problem)
    if args.json:
        print_json(solution_to_json(solution))
        return EXIT_OK
    rows = [
        [
            a.job_id,
            a.pool_id,
            round(a.charge_minor / MINOR_PER_MAJOR, 2),
            round(a.carbon_g / 1000, 1),
            a.explanation,
        ]
        for a in solution.assignments
    ]
    print_table(["job", "pool", f"charge_{CURRENCY.lower()}", "carbon_kg", "why"], rows)
    if solution.unplaced:
        print()
        print_table(["unplaced", "reason"], [[u.job_id, u.reason] for u in solution.unplaced])
    print()
    bound = "none" if solution.bound is None else f"{solution.bound:,.2f}"
    gap = "" if solution.gap is None else f", gap {solution.gap:.2%}"
    print(
        f"placed {len(solution.assignments)} of "
        f"{len(solution.assignments) + len(solution.unplaced)} jobs; "
        f"objective {solution.objective:,.2f} weighted device-hours (bound {bound}{gap}); "
        f"cost {solution.cost_milli_minor / (1000 * MINOR_PER_MAJOR):,.2f} {CURRENCY}-equivalent"
        f"{', proven optimal' if solution.optimal else ''}; "
        f"solver {solution.solver} in {solution.seconds:.2f} s"
    )
    return EXIT_OK


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "match",
        help="solve a matching problem file offline",
        description="Solve a replayable matching problem (docs/matcher-problem.md).",
    )
    p.add_argument("--problem", required=True, help="the problem file (JSON)")
    p.add_argument("--solver", choices=SOLVERS, default="auto", help="default: auto")
    p.add_argument(
        "--time-limit", type=_positive, default=2.0, help="seconds (default 2)", metavar="S"
    )
    p.add_argument("--json", action="store_true", help="print the solution as JSON")
    p.set_defaults(func=_match)
