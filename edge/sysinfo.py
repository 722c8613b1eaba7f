"""Box health from /proc and /sys (Linux), for telemetry. Missing sources are simply left out."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CpuMeter", "read_metrics"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


class CpuMeter:
    """CPU busy share between two calls, from /proc/stat jiffies."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None

    def percent(self) -> float | None:
        text = _read("/proc/stat")
        if not text:
            return None
        fields = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields)
        last, self._last = self._last, (idle, total)
        if last is None or total == last[1]:
            return None
        return round(100.0 * (1 - (idle - last[0]) / (total - last[1])), 1)


def read_metrics(cpu: CpuMeter | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    if cpu is not None and (pct := cpu.percent()) is not None:
        out["cpu_pct"] = pct
    if loadavg := _read("/proc/loadavg"):
        out["load1"] = float(loadavg.split()[0])
    if meminfo := _read("/proc/meminfo"):
        mem = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in meminfo.splitlines() if ":" in line)}
        if mem.get("MemTotal") and "MemAvailable" in mem:
            out["mem_used_pct"] = round(100.0 * (1 - mem["MemAvailable"] / mem["MemTotal"]), 1)
    if temp := _read("/sys/class/thermal/thermal_zone0/temp"):
        out["temp_c"] = round(int(temp.strip()) / 1000.0, 1)
    if statm := _read("/proc/self/statm"):
        out["rss_mb"] = round(int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    if uptime := _read("/proc/uptime"):
        out["uptime_s"] = float(uptime.split()[0])
    return out
