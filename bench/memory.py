"""Peak memory of one phase of a benchmark, honestly: the kernel's high-water mark reset just before the phase, so
loading the model (or anything before) does not count. Linux only (/proc)."""

from pathlib import Path


def status_mb(field: str) -> float:
    """A field of /proc/self/status in MB (VmRSS: now, VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: writing 5 to clear_refs); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
