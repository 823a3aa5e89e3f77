"""Do `fibmoe bench` and `fibmoe bench --official` agree? Read the results of repeated, interleaved runs of
both (scripts/gpu_agreement.sh) and compare the gap between the two paths with each path's own spread.

    python scripts/agreement.py RESULTS_DIR [--json OUT]

RESULTS_DIR holds bench-*.json and official-*.json (any depth). Per workload and per quantity (the
variant's latency, the reference's latency): each run's mean latency, the gap between the means of the
two paths, and the noise: the larger of the two paths' run-to-run spreads ((max - min) / mean). The paths
agree on a workload when the gap is within the noise. The reference is the same source in both paths
(the definition's reference text is fibmoe's reference), so a gap there is the harness process, not the
code: at small T the reference is host-bound and shows host-side differences first.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def runs(folder: Path, kind: str) -> list[dict]:
    """Each run of `kind` (bench or official): {uuid: record}, in the order they were written."""
    files = sorted(folder.rglob(f"{kind}-*.json"), key=lambda p: p.name)
    return [{r["uuid"]: r for r in json.loads(p.read_text())["records"] if not r.get("baseline")} for p in files]


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.mean(xs) if len(xs) > 1 else 0.0


def compare(bench: list[dict], official: list[dict], key: str) -> list[dict]:
    rows = []
    for uuid in bench[0]:
        b = [r[uuid][key] for r in bench if r.get(uuid, {}).get(key)]
        o = [r[uuid][key] for r in official if r.get(uuid, {}).get(key)]
        if not b or not o:
            continue
        gap = statistics.mean(b) / statistics.mean(o) - 1
        noise = max(spread(b), spread(o))
        rows.append(dict(uuid=uuid, seq_len=bench[0][uuid]["seq_len"], quantity=key, bench_ms=b, official_ms=o,
                         gap=gap, noise=noise, agree=abs(gap) <= noise))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    bench, official = runs(args.folder, "bench"), runs(args.folder, "official")
    if not bench or not official:
        sys.exit(f"{args.folder}: needs bench-*.json and official-*.json results")
    rows = compare(bench, official, "latency_ms") + compare(bench, official, "reference_ms")
    print(f"{len(bench)} bench runs, {len(official)} official runs (mean latency of each run, us)")
    print(f"{'quantity':12} {'T':>5}  {'bench runs':28} {'official runs':28} {'gap':>7} {'noise':>7}  agree")
    for r in rows:
        b = " ".join(f"{1e3 * x:.1f}" for x in r["bench_ms"])
        o = " ".join(f"{1e3 * x:.1f}" for x in r["official_ms"])
        print(f"{r['quantity']:12} {r['seq_len']:>5}  {b:28} {o:28} {100 * r['gap']:6.1f}% {100 * r['noise']:6.1f}%  "
              f"{'yes' if r['agree'] else 'NO'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
