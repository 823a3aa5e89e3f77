import os

import torch

# Triton kernels run in Triton's CPU interpreter when there is no GPU; it must be chosen before
# triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/gpu holds checks that only mean something on a GPU; they run on the device machine
# (`python -m pytest tests/gpu`) and are not collected where there is none.
collect_ignore = [] if torch.cuda.is_available() else ["gpu"]
