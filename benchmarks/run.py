"""The orchestrator: runs every case's programs interleaved, in fresh processes, and prints ratios.

Usage: ``python -m benchmarks [--rounds N] [--quick] [--only CASE,...] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, rivals
from benchmarks.common import Plan

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    """One kind of work: eventyard programs, raw programs, and how to prepare each run."""

    name: str
    title: str
    yard: list[str]
    raw: list[str]
    args: dict[str, Any]
    prefill: int = 0
    target: dict[str, float] = field(default_factory=dict)  # eventyard program -> minimum ratio
    handlers: dict[str, str] = field(default_factory=dict)  # program -> handler of its queue
    retry_ttl_ms: int = 0
    rivals: list[str] = field(default_factory=list)  # what users would pick instead (rivals.py)


def cases(quick: bool) -> list[Case]:
    scale = 0.25 if quick else 1.0

    def n(count: int) -> int:
        return max(100, int(count * scale))

    return [
        # eventyard_*_public: the same program with the fast paths off (aiormq's public API).
        Case("publish_one", "single sync publish(), one confirm at a time",
             ["eventyard_publish_one", "eventyard_publish_one_public"],
             ["pika_publish_one", "aio_pika_publish_one"],
             {"count": n(2000)}, target={"eventyard_publish_one": 0.9},
             rivals=["faststream_publish_one", "petisco_publish_one"]),
        Case("publish_batch", "publish([...]) of 20,000 events (raw: window 256)",
             ["eventyard_publish_batch", "eventyard_publish_batch_public"], ["aiormq_publish_batch"],
             {"count": n(20_000)}, target={"eventyard_publish_batch": 1.0},
             rivals=["faststream_publish_batch", "petisco_publish_batch"]),
        Case("consume", "consume + ack, no-op handler, prefetch 256 (prefilled queue)",
             ["eventyard_consume_async", "eventyard_consume_sync", "eventyard_consume_async_public",
              "eventyard_consume_sync_public"],
             ["aiormq_consume", "pika_consume"],
             {"count": n(20_000)}, prefill=n(20_000),
             target={"eventyard_consume_async": 1.0, "eventyard_consume_sync": 0.9},
             handlers={"eventyard_consume_async": "anoop", "eventyard_consume_async_public": "anoop"},
             rivals=["faststream_consume", "petisco_consume"]),
        Case("retry", "retry path: every handler fails once (retry TTL 0)",
             ["eventyard_retry"], ["aiormq_retry"], {"count": n(5000)}, prefill=n(5000),
             handlers={"eventyard_retry": "anoop", "aiormq_retry": "anoop", "petisco_retry": "anoop"},
             rivals=["petisco_retry"]),
        # Instrumentation: each eventyard program beside the same one with its instruments
        # switched off ("raw" here); the default has the OpenTelemetry API and no SDK set up.
        Case("otel_publish", "publish([...]) of 20,000: OpenTelemetry on (SDK, exporter "
             "discarding) and by default, against instruments off",
             ["eventyard_publish_batch_otel", "eventyard_publish_batch"],
             ["eventyard_publish_batch_off"], {"count": n(20_000)}),
        Case("otel_consume", "consume + ack, async no-op: OpenTelemetry on (SDK, exporter "
             "discarding) and by default, against instruments off",
             ["eventyard_consume_async_otel", "eventyard_consume_async"],
             ["eventyard_consume_async_off"], {"count": n(20_000)}, prefill=n(20_000),
             handlers={"eventyard_consume_async_otel": "anoop", "eventyard_consume_async": "anoop",
                       "eventyard_consume_async_off": "anoop"}),
        # The transactional outbox (benchmarks/outbox.py, needs PostgreSQL) beside a plain publish.
        Case("outbox", "outbox: 20,000 events committed (transactions of 100) and relayed, "
             "beside plain publish([...])", ["eventyard_outbox_relay", "eventyard_outbox_commit_relay"],
             ["eventyard_publish_batch"], {"count": n(20_000)},
             target={"eventyard_outbox_relay": 0.5}),
        Case("outbox_latency", "latency, outbox commit to handler (raw: bus publish to handler), "
             "500 events/s", ["eventyard_outbox_latency", "eventyard_outbox_latency_one_loop"],
             ["eventyard_latency"], {"count": n(3000), "rate": 500.0},
             handlers={"eventyard_outbox_latency": "anoop", "eventyard_latency": "anoop",
                       "eventyard_outbox_latency_one_loop": "anoop"}),
        Case("latency", "end-to-end latency, publish to handler, at a fixed rate",
             ["eventyard_latency"], ["aiormq_latency"], {"count": n(4000), "rate": 1000.0},
             handlers={"eventyard_latency": "anoop", "aiormq_latency": "anoop"}),
    ]


def run_program(name: str, plan: Plan, args: dict[str, Any]) -> dict[str, Any]:
    """Run one program in a fresh interpreter and return its result."""
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", name, json.dumps(plan.to_dict()),
         json.dumps(args)], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise RuntimeError(f"{name} failed:\n{process.stdout}\n{process.stderr}")


def rate(result: dict[str, Any]) -> float:
    return float(result["count"]) / float(result["seconds"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_case(case: Case, rounds: int, log: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """Every program of ``case``, ``rounds`` times, in an order that rotates each round."""
    programs = case.yard + case.raw + case.rivals
    plans = {handler: common.new_plan(handler, case.retry_ttl_ms)
             for handler in {case.handlers.get(p, "noop") for p in programs}}
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in programs}
    managers = [common.declared(plan) for plan in plans.values()]
    for manager in managers:
        manager.__enter__()
    try:
        for round_ in range(rounds):
            order = programs[round_ % len(programs):] + programs[:round_ % len(programs)]
            for program in order:
                plan = plans[case.handlers.get(program, "noop")]
                common.purge(plan)
                if case.prefill:
                    common.prefill(plan, case.prefill)
                result = run_program(program, plan, case.args)
                if case.prefill:
                    left = common.queue_depth(plan)
                    if left:
                        raise RuntimeError(f"{program} left {left} messages in {plan.queue}")
                results[program].append(result)
                shown = (f"p50 {1000 * percentile(result['latencies'], 0.5):.2f} ms"
                         if "latencies" in result else f"{rate(result):,.0f} msg/s")
                log(f"  round {round_ + 1} {program}: {shown}")
    finally:
        for manager in managers:
            manager.__exit__(None, None, None)
    return results


def summarize(case: Case, results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of the table: each eventyard program beside the best raw program (medians)."""
    rows = []
    if case.name.endswith("latency"):
        for program in case.yard + case.raw:
            values = [x for r in results[program] for x in r["latencies"]]
            rows.append({"case": case.name, "program": program,
                         "p50_ms": 1000 * percentile(values, 0.5),
                         "p99_ms": 1000 * percentile(values, 0.99)})
        return rows
    medians = {p: statistics.median(rate(r) for r in results[p]) for p in results}
    spreads = {p: (min(rate(r) for r in results[p]), max(rate(r) for r in results[p]))
               for p in results}
    best_raw = max(case.raw, key=lambda p: medians[p])
    for program in case.yard:
        ratio = medians[program] / medians[best_raw]
        rows.append({"case": case.name, "program": program, "rate": medians[program],
                     "spread": spreads[program], "raw": best_raw, "raw_rate": medians[best_raw],
                     "raw_spread": spreads[best_raw], "ratio": ratio,
                     "target": case.target.get(program),
                     "others": {p: medians[p] for p in case.raw if p != best_raw},
                     "rivals": {p: medians[p] for p in case.rivals}})
    return rows


def memory(count: int, program: str, log: Callable[[str], None]) -> dict[str, Any]:
    """RSS of an eventyard consumer over ``count`` messages, sampled every 5% of them."""
    handler = "anoop" if program.endswith("async") else "noop"
    plan = common.new_plan(handler)
    with common.declared(plan):
        log(f"  prefilling {count:,} messages")
        common.prefill(plan, count)
        result = run_program(program, plan, {"count": count, "sample_every": max(1, count // 20)})
    samples = result["samples"]
    first_quarter = next(kib for seen, kib in samples if seen >= count // 4)
    growth = samples[-1][1] - first_quarter
    log(f"  {program}: RSS {result['rss_before'] / 1024:.1f} MiB before, "
        f"{first_quarter / 1024:.1f} MiB at 25%, {samples[-1][1] / 1024:.1f} MiB at 100% "
        f"({rate(result):,.0f} msg/s)")
    return {"program": program, "count": count, "rss_before_kib": result["rss_before"],
            "samples": samples, "growth_after_25pct_kib": growth}


def render(rows: list[dict[str, Any]], mem: list[dict[str, Any]]) -> str:
    lines = ["| case | eventyard | msg/s | raw (fastest) | msg/s | ratio | target |",
             "|---|---|---:|---|---:|---:|---:|"]
    for row in rows:
        if "ratio" not in row:
            continue
        target = f"≥ {row['target']:.1f}" if row["target"] is not None else "-"
        mark = "" if row["target"] is None else (" ✓" if row["ratio"] >= row["target"] else " ✗")
        lines.append(f"| {row['case']} | {row['program']} | {row['rate']:,.0f} | {row['raw']} | "
                     f"{row['raw_rate']:,.0f} | {row['ratio']:.2f}{mark} | {target} |")
        for other, value in row["others"].items():
            lines.append(f"| | | | {other} | {value:,.0f} | {row['rate'] / value:.2f} | |")
        for rival, value in row.get("rivals", {}).items():
            lines.append(f"| | | | rival: {rival} | {value:,.0f} | {row['rate'] / value:.2f} | |")
    latency = [r for r in rows if "p50_ms" in r]
    if latency:
        lines += ["", "| latency at a fixed rate | p50 ms | p99 ms |", "|---|---:|---:|"]
        lines += [f"| {r['program']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in latency]
    if mem:
        lines += ["", "| memory | messages | RSS at 25% | RSS at 100% | growth after 25% |",
                  "|---|---:|---:|---:|---:|"]
        for m in mem:
            at25 = next(kib for seen, kib in m["samples"] if seen >= m["count"] // 4)
            lines.append(f"| {m['program']} | {m['count']:,} | {at25 / 1024:.1f} MiB | "
                         f"{m['samples'][-1][1] / 1024:.1f} MiB | "
                         f"{m['growth_after_25pct_kib'] / 1024:+.1f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each program (default 3)")
    parser.add_argument("--quick", action="store_true", help="a quarter of the messages")
    parser.add_argument("--only", default="", help="comma-separated cases, e.g. consume,memory")
    parser.add_argument("--memory-messages", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    options = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    chosen = {c for c in options.only.split(",") if c}
    info = common.machine()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    no_petisco = rivals.petisco_usable()
    if no_petisco:
        log(f"{no_petisco}: its comparison is skipped")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    raw_results: dict[str, Any] = {}
    for case in cases(options.quick):
        if chosen and case.name not in chosen:
            continue
        if no_petisco:
            case.rivals = [p for p in case.rivals if not p.startswith("petisco_")]
        log(f"{case.name}: {case.title}")
        results = run_case(case, options.rounds, log)
        raw_results[case.name] = results
        rows += summarize(case, results)
    mem = []
    if not chosen or "memory" in chosen:
        log("memory: RSS of a consumer over many messages")
        count = options.memory_messages // (4 if options.quick else 1)
        for program in ("eventyard_consume_sync", "eventyard_consume_async"):
            mem.append(memory(count, program, log))
    table = render(rows, mem)
    print(table)
    log(f"done in {time.monotonic() - started:.0f}s")
    if options.json:
        options.json.write_text(json.dumps({"machine": info, "rows": rows, "memory": mem,
                                            "results": raw_results}, indent=1))
