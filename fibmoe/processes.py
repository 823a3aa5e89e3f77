"""Child processes that cannot outlive the one that started them."""

import signal
import sys


def die_with_parent() -> None:
    """In a child: SIGKILL it when the thread that started it dies (Linux prctl PR_SET_PDEATHSIG; a
    no-op elsewhere). A child in a session of its own is out of reach of its starter's process group, so
    without this a starter killed outright leaves it running, holding the starter's pipes open."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
