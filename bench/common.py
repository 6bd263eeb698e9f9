"""Shared by the benchmark scripts: percentiles and writing a JSON result."""
import json


def pct(xs, p):
    """The p-th percentile of xs by linear interpolation, or None for no samples."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def emit(result, path):
    """Prints the result as JSON, and writes it to path too when one is given."""
    text = json.dumps(result, indent=1)
    if path:
        with open(path, "w") as f:
            f.write(text)
    print(text)
