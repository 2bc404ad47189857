"""A fixed batch of generated programs, drawn once and replayed elsewhere: how the
differential fuzzer runs on a lent GPU machine that has no compiler.

    python tests/fuzz/batch.py draw N FILE          # N random cases (gen.cases) to FILE
    python tests/fuzz/batch.py run FILE [--targets cuda] [--limit N]

`draw` writes one case per line (its source, symbols, seed, layout: what `gen.Case` holds).
`run` replays each on the reference and on the targets (default: every available one) and
prints the problems; it exits 1 when any case disagrees. With `TDSL_CUDA_BUNDLES=DIR` set,
`run --targets cuda` on a machine with the compiler (and no GPU) compiles every kernel into
DIR; the same command on the GPU machine then runs them from DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen  # noqa: E402


def draw(count: int, path: Path) -> None:
    """Draw `count` cases with hypothesis and write them, one JSON object per line."""
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: dict[str, gen.Case] = {}  # by source: the first case of each program

    @settings(max_examples=3 * count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=gen.cases(allow_known=False))
    def collect(case: gen.Case) -> None:
        drawn.setdefault(case.source, case)

    collect()
    cases = list(drawn.values())[:count]
    with open(path, "w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps({"source": case.source, **case.to_json()}) + "\n")
    print(f"wrote {len(cases)} cases to {path}")


def read(path: Path) -> list[gen.Case]:
    """The cases of a batch file."""
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        data = json.loads(line)
        cases.append(gen.Case.from_json(data.pop("source"), data))
    return cases


def run(path: Path, targets: list[str] | None, limit: int | None, compile_only: bool,
        shard: tuple[int, int] = (0, 1)) -> int:
    """Replay a batch (the cases of one shard); return the number of cases with problems."""
    cases = read(path)[:limit][shard[0]::shard[1]]
    wanted = targets or gen.available_targets()
    failed = 0
    start = time.perf_counter()
    for number, case in enumerate(cases):
        problems = gen.run_case(case, wanted)
        if compile_only:  # without a GPU only the compile matters
            problems = [p for p in problems if "compiling raised" in p]
        if problems and not gen.known(case, problems):
            failed += 1
            print(f"--- case {number} (symbols {case.symbols}, seed {case.seed}, layout "
                  f"{case.layout}):\n{case.source}\n" + "\n".join(problems), flush=True)
    seconds = time.perf_counter() - start
    print(f"{len(cases)} cases on {', '.join(wanted)}: {failed} with problems "
          f"({seconds:.0f} s)")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draw", help="draw N cases into FILE")
    d.add_argument("count", type=int)
    d.add_argument("file", type=Path)
    r = sub.add_parser("run", help="replay the cases of FILE")
    r.add_argument("file", type=Path)
    r.add_argument("--targets", help="comma-separated targets (default: every available)")
    r.add_argument("--limit", type=int, default=None, help="only the first N cases")
    r.add_argument("--shard", default="0/1", help="I/N: only every Nth case from the Ith")
    r.add_argument("--compile-only", action="store_true",
                   help="report only compile failures (to fill TDSL_CUDA_BUNDLES without a GPU)")
    args = parser.parse_args()
    if args.command == "draw":
        warnings.simplefilter("ignore")
        draw(args.count, args.file)
        return 0
    targets = args.targets.split(",") if args.targets else None
    index, count = (int(n) for n in args.shard.split("/"))
    return 1 if run(args.file, targets, args.limit, args.compile_only, (index, count)) else 0


if __name__ == "__main__":
    sys.exit(main())
