"""Static-shape buckets shared by the pipeline, the evaluator and the proposer: sizes are
rounded up so that jitted functions see few distinct shapes (one compilation per bucket)."""

from __future__ import annotations


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum, 1)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` >= n."""
    return -(-int(n) // int(multiple)) * int(multiple)
