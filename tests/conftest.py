from fibmoe.triton_env import use_interpreter_without_gpu

# Without a GPU, Triton kernels run in Triton's CPU interpreter, chosen as the CLI chooses it (before
# triton is first imported). With a GPU nothing is set: no test forces the interpreter there.
use_interpreter_without_gpu()

# tests/gpu holds checks that only mean something on a GPU; they run on the device machine
# (`python -m pytest tests/gpu`) and are not collected where there is none.
import torch  # noqa: E402

collect_ignore = [] if torch.cuda.is_available() else ["gpu"]
