"""Child processes that cannot outlive the one that started them."""

import signal
import sys
import threading

if sys.platform == "linux":
    import ctypes

    # resolved here, in the parent: a forked child of a threaded parent must not dlopen (another thread
    # may have held the loader's lock at the fork), and this runs between fork and exec (preexec_fn)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
else:  # pragma: no cover
    _PRCTL = None


def die_with_parent() -> None:
    """In a child: SIGKILL it when the thread that started it dies (Linux prctl PR_SET_PDEATHSIG; a
    no-op elsewhere). A child in a session of its own is out of reach of its starter's process group, so
    without this a starter killed outright leaves it running, holding the starter's pipes open."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def interruptible() -> None:
    """Let Ctrl-C (SIGINT) interrupt this process's main thread, whatever its starter left: an ignored
    SIGINT is inherited across exec, and Python then installs no KeyboardInterrupt handler (a loop started
    that way could only be killed, not stopped with its resume hint)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
