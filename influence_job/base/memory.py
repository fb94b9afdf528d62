"""Memory probes, in one place: what the host and the device have, what is free for a factorisation now, and what
this process holds. Each returns None (or 0 for the resident size) where the platform does not say, so callers
plan without a limit rather than fail."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch


def meminfo_bytes(field: str) -> float | None:
    """A /proc/meminfo field in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_bytes(device: torch.device) -> float | None:
    """Memory a factorisation may take on ``device`` now: free device memory plus what PyTorch's CUDA cache holds
    unused, or the host's MemAvailable on the CPU (None where unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return meminfo_bytes("MemAvailable")


def physical_bytes() -> int | None:
    """The host's physical memory (what results.json's environment reports)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def rss_bytes() -> float:
    """This process's resident size now (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0.0


def peak_rss_bytes() -> int:
    """This process's peak resident size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cgroup_peak_bytes() -> int | None:
    """The container's peak memory (cgroup v2 memory.peak, or v1 max_usage_in_bytes) where readable."""
    for path in ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"):
        try:
            return int(Path(path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None
