import pytest

from fibmoe.triton_env import silence_interpreter_exp_overflow, use_interpreter_without_gpu

# Without a GPU, Triton kernels run in Triton's CPU interpreter, chosen as the CLI chooses it (before
# triton is first imported). With a GPU nothing is set: no test forces the interpreter there.
use_interpreter_without_gpu()

# tests/gpu holds checks that only mean something on a GPU; they run on the device machine
# (`python -m pytest tests/gpu`) and are not collected where there is none.
import torch  # noqa: E402

collect_ignore = [] if torch.cuda.is_available() else ["gpu"]


@pytest.fixture(autouse=True)
def _interpreter_exp_overflow_is_noise():
    """pytest resets warning filters around every test (and around loading this file), so the CLI's
    filter for the interpreter's known exp overflow is applied again per test; other warnings still show."""
    silence_interpreter_exp_overflow()


TEST_LIMIT_S = 600  # the slowest test takes ~2 min on 2 busy cores; a scheduling bug hangs, it must fail


@pytest.fixture(autouse=True)
def _a_hang_fails(request):
    """A test that runs past TEST_LIMIT_S fails with a traceback of where it was (an interpreted persistent
    kernel whose item waits on one never signalled spins forever: this turns that into a failure)."""
    import signal

    def expired(signum, frame):
        pytest.fail(f"{request.node.nodeid} ran past {TEST_LIMIT_S} s (a hang?)", pytrace=True)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def load_script():
    """`load_script("NAME")`: scripts/NAME.py imported as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
