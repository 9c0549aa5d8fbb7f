"""Run build stages as parallel jobs along their dependency graph (list scheduling, longest path first).

The same choice rule drives the real run (:func:`run_parallel`, one process per stage) and the estimate from
recorded stage times (:func:`simulate`), so the model card's build time is the schedule that actually runs.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Container, Mapping, Sequence

log = logging.getLogger("diffrl.zoo.build")

Depends = Mapping[str, Sequence[str]]


def longest_path(durations: Mapping[str, float], depends: Depends) -> dict[str, float]:
    """For each stage: its duration plus the longest chain of stages that wait for it (seconds)."""
    waiting = {s: [t for t in depends if s in depends[t]] for s in depends}
    out: dict[str, float] = {}

    def visit(s: str) -> float:
        if s not in out:
            out[s] = durations.get(s, 0.0) + max((visit(t) for t in waiting[s]), default=0.0)
        return out[s]

    for s in depends:
        visit(s)
    return out


def _check(stages: Sequence[str], depends: Depends) -> None:
    missing = {d for s in stages for d in depends[s] if d not in stages}
    if missing:
        raise ValueError(f"stages {sorted(missing)} are needed by the selected stages but not selected")


def _ready(stages: Sequence[str], depends: Depends, done: Container[str], running: Container[str]) -> list[str]:
    """Stages neither done nor running whose dependencies are all done, in build order."""
    return [s for s in stages if s not in done and s not in running and all(d in done for d in depends[s])]


def _next(ready: list[str], priority: Mapping[str, float], order: Sequence[str]) -> str:
    """The ready stage with the longest remaining path (ties: build order)."""
    return max(ready, key=lambda s: (priority[s], -order.index(s)))


def simulate(stages: Sequence[str], depends: Depends, durations: Mapping[str, float],
             jobs: int) -> tuple[float, list[tuple[str, float, float]]]:
    """Makespan (seconds) and ``(stage, start, end)`` of running ``stages`` on ``jobs`` workers, one stage each."""
    _check(stages, depends)
    priority = longest_path(durations, depends)
    done: dict[str, float] = {}
    running: dict[str, float] = {}  # stage -> end time
    plan, now = [], 0.0
    while len(done) < len(stages):
        ready = _ready(stages, depends, done, running)
        while ready and len(running) < jobs:
            s = _next(ready, priority, stages)
            ready.remove(s)
            running[s] = now + durations.get(s, 0.0)
            plan.append((s, now, running[s]))
        now = min(running.values())
        for s in [s for s, end in running.items() if end == now]:
            done[s] = running.pop(s)
    return now, plan


def run_parallel(stages: Sequence[str], depends: Depends, durations: Mapping[str, float], jobs: int,
                 launch: Callable[[str], subprocess.Popen], poll_s: float = 1.0) -> None:
    """Run ``stages`` as processes started by ``launch(stage)``, at most ``jobs`` at a time, each once all its
    dependencies have exited successfully. On a failure no new stage starts, the running ones are left to
    finish, and a ``RuntimeError`` names the failed stages."""
    _check(stages, depends)
    priority = longest_path(durations, depends)
    done: set[str] = set()
    failed: list[str] = []
    running: dict[str, subprocess.Popen] = {}
    while running or (not failed and len(done) < len(stages)):
        ready = _ready(stages, depends, done, running)
        while ready and not failed and len(running) < jobs:
            s = _next(ready, priority, stages)
            ready.remove(s)
            running[s] = launch(s)
        time.sleep(poll_s)
        for s, proc in list(running.items()):
            if proc.poll() is not None:
                del running[s]
                log.info("%s exited with %d", s, proc.returncode)
                if proc.returncode == 0:
                    done.add(s)
                else:
                    failed.append(s)
    if failed:
        raise RuntimeError(f"zoo build stage(s) {', '.join(failed)} failed; see their logs. Finished: "
                           f"{', '.join(s for s in stages if s in done) or 'none'}. Rerun a stage with --stage NAME.")
