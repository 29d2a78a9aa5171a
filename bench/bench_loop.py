"""How long the loop takes, step by step, for seed 000's BullMQ backlog (the demo's scenario).

    .venv/bin/python -m bench.bench_loop              # 10 breaches on one loop
    .venv/bin/python -m bench.bench_loop --runs 20

One loop (redis-server, `runbook run`, Prometheus and Alertmanager from Debian's packages, the
rules and Alertmanager config rendered with --time-scale 0.003) is breached `runs` times: 150
BullMQ jobs land in a queue nobody works, the responder starts a worker that drains it, the
alert resolves. Each step is timed from the breach: Prometheus' pending (its activeAt) and
firing (the alert's startsAt), the responder's webhook received, action started, action done,
and the resolved notification. The reference, from this run's rendered config, is the loop's
own limit: scrape interval + evaluation interval + `for` + group_wait. The responder's part is
webhook received -> action started (target: at most 0.1s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from runbook.commands.demo import STEPS, Cycle, Missing, demo_loop, find_tools

LABELS = {
    "pending": "breach -> pending",
    "firing": "breach -> firing",
    "webhook": "breach -> webhook received",
    "action_started": "breach -> action started",
    "action_done": "breach -> action done",
    "resolved": "breach -> resolved notification",
}
GAPS = [("pending", "firing", "pending -> firing"),
        ("firing", "webhook", "firing -> webhook received"),
        ("webhook", "action_started", "webhook -> action started (responder)"),
        ("action_started", "action_done", "action started -> done (the worker)"),
        ("action_done", "resolved", "action done -> resolved notification")]


def row(name: str, values: list[float]) -> str:
    """One table line: min, median, max in seconds."""
    return (f"{name:<40} {min(values):8.3f} {statistics.median(values):8.3f} "
            f"{max(values):8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="breaches to time (default 10)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        tools = find_tools()
    except Missing as exc:
        print(exc, file=sys.stderr)
        return 2
    cycles: list[Cycle] = []
    with demo_loop(tools) as loop:
        limit = loop.limit
        print(f"loop limit {limit:g}s = scrape {loop.timing.interval:g}s + evaluation "
              f"{loop.timing.interval:g}s + for {loop.hold:g}s + group_wait "
              f"{loop.timing.group_wait():g}s (group_interval {loop.timing.group_interval():g}s)")
        for i in range(args.runs):
            started = time.monotonic()
            cycle = loop.cycle()
            if cycle.incident.get("state") != "healed":
                print(f"run {i + 1}: incident ended {cycle.incident.get('state')}",
                      file=sys.stderr)
                return 1
            cycles.append(cycle)
            print(f"run {i + 1:2}: action started {cycle.since_breach('action_started'):.3f}s "
                  f"after the breach, resolved {cycle.since_breach('resolved'):.3f}s "
                  f"(cycle {time.monotonic() - started:.1f}s)", flush=True)
    print(f"\n{'step (seconds)':<40} {'min':>8} {'median':>8} {'max':>8}")
    for step in STEPS:
        if step in LABELS:
            print(row(LABELS[step], [c.at[step] - c.breach for c in cycles]))
    print()
    for first, second, name in GAPS:
        print(row(name, [c.at[second] - c.at[first] for c in cycles]))
    to_action = [c.at["action_started"] - c.breach for c in cycles]
    responder = [c.at["action_started"] - c.at["webhook"] for c in cycles]
    print(f"\nbreach -> action started / loop limit ({limit:g}s): "
          f"min {min(to_action) / limit:.2f}, median {statistics.median(to_action) / limit:.2f}, "
          f"max {max(to_action) / limit:.2f}")
    print(f"responder's own part (webhook -> action started): median "
          f"{statistics.median(responder) * 1000:.1f} ms, max {max(responder) * 1000:.1f} ms "
          f"(target <= 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
