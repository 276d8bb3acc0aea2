"""Caller scenarios for ``fs-consent simulate`` and the benchmark: emulated calls and a summary."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import gevent.pool

from .script import CallerScript
from .switch import FreeSwitchEmulator

# name -> (what the caller does, the fs_consent value expected in opt-out mode, in opt-in mode)
SCENARIOS = {
    "refuse": (dict(digits=["1"]), "refused", "refused"),
    "silence": (dict(digits=[None]), "granted", "refused"),
    "grant-key": (dict(digits=["2"]), None, "granted"),  # opt-out: 2 is "another digit", replayed
    "other-digit": (dict(digits=["5", None]), "granted", "refused"),
    "hangup-in-prompt": (dict(hangup_in_prompt=True), None, None),
    # after the prompt, while waiting for the digit: the emulator's wire chaos may make the prompt
    # complete like a timeout before CHANNEL_HANGUP (s13); still a hang-up, not silence (DESIGN §7)
    "hangup-in-timeout": (dict(hangup_in_timeout=True), None, None),
    "caller-withdraw": (dict(digits=[None], caller_keys=[(0.1, "*1")]), "withdrawn", "refused"),
    "agent-withdraw": (dict(digits=[None], agent_keys=[(0.1, "*2")]), "withdrawn", "refused"),
    "hold": (dict(digits=[None], hold=[(0.05, 0.1)]), "granted", "refused"),
    "caller-hangup": (dict(digits=[None], caller_hangup_after=0.15), "granted", "refused"),
}
SCENARIO_NAMES = sorted(SCENARIOS)
_TIMED = ("caller_keys", "agent_keys", "hold")


def caller_script(name: str, number: str, time_scale: float = 1.0):
    behaviour = dict(SCENARIOS[name][0])
    for key in _TIMED:
        if key in behaviour:
            behaviour[key] = [(t * time_scale, v if isinstance(v, str) else v * time_scale)
                              for t, v in behaviour[key]]
    if "caller_hangup_after" in behaviour:
        behaviour["caller_hangup_after"] *= time_scale
    talk = 0.3 * time_scale
    return CallerScript(caller_number=number, talk_seconds=talk, **behaviour)


def expected_outcome(name: str, opt_in: bool) -> str | None:
    _, opt_out_value, opt_in_value = SCENARIOS[name]
    if name == "grant-key" and not opt_in:
        return "granted"  # the 2 is replayed once, then silence grants
    return opt_in_value if opt_in else opt_out_value


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@dataclass
class Summary:
    outcomes: dict = field(default_factory=lambda: defaultdict(Counter))
    recorded: Counter = field(default_factory=Counter)
    mismatches: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    calls: int = 0
    wall: float = 0.0
    chaos: str = "wire chaos off"  # the emulator's WireChaos.describe()

    def rows(self) -> list[dict]:
        rows = []
        for name in sorted(self.outcomes):
            counts = self.outcomes[name]
            rows.append({
                "scenario": name, "calls": sum(counts.values()),
                "outcomes": ", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                "recorded": self.recorded[name], "unexpected": self.mismatches[name],
            })
        return rows

    def footer(self) -> str:
        def ms(v):
            return "-" if v is None else f"{v * 1000:.1f} ms"

        rate = self.calls / self.wall if self.wall else 0.0
        return (f"{self.calls} calls in {self.wall:.2f} s ({rate:.1f} calls/s), errors: {len(self.errors)}, "
                f"unexpected outcomes: {sum(self.mismatches.values())}; "
                f"decision->record_session p50 {ms(percentile(self.latencies, 50))} "
                f"p99 {ms(percentile(self.latencies, 99))}; emulator {self.chaos}")


def run_simulation(host: str, port: int, *, spool_dir: Path, calls: int, concurrency: int,
                   scenario: str = "mix", time_scale: float = 1.0, opt_in: bool = False,
                   chaos=None, call_timeout: float = 30.0) -> Summary:
    """``chaos``: the emulator's WireChaos (None: from the environment, on by default)."""

    emulator = FreeSwitchEmulator(host, port, spool_dir=spool_dir, time_scale=time_scale, chaos=chaos)
    summary = Summary(chaos=emulator.chaos.describe())
    names = SCENARIO_NAMES if scenario == "mix" else [scenario]

    def one(i: int) -> None:
        name = names[i % len(names)]
        number = f"06{10000000 + i % 90000000:08d}"
        try:
            result = emulator.place_call(caller_script(name, number, time_scale), timeout=call_timeout)
        except Exception as exc:  # noqa: BLE001 - a failed call is a figure, not a crash
            summary.errors.append(f"{name}: {type(exc).__name__}")
            return
        outcome = result.channel_vars.get("fs_consent") or "(none)"
        summary.outcomes[name][outcome] += 1
        summary.recorded[name] += bool(result.recordings)
        expected = expected_outcome(name, opt_in) or "(none)"
        if outcome != expected:
            summary.mismatches[name] += 1
        summary.errors.extend(f"{name}: {e}" for e in result.errors)
        if result.decision_latency is not None:
            summary.latencies.append(result.decision_latency)

    started = time.perf_counter()
    pool = gevent.pool.Pool(concurrency)
    for i in range(calls):
        pool.spawn(one, i)
    pool.join()
    summary.calls, summary.wall = calls, time.perf_counter() - started
    return summary

