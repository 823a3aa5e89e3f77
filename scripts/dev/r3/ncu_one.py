"""Three calls of rung 3 on one contest workload (by T), for Nsight Compute to profile the third."""

import sys

import torch

from fibmoe import dataset, inputs, variants
from fibmoe.geometry import CONTEST

T = int(sys.argv[1])
ds = dataset.load(CONTEST.name)
(w,) = [w for w in ds.workloads if w.workload.axes["seq_len"] == T][:1]
fn = variants.build(variants.pack(variants.resolve(["r3-triton-fp8"])[0], ds.definition.name), ds.definition)
inp = inputs.generate(ds, w, "cuda", "contest")
out = torch.empty(T, 7168, dtype=torch.bfloat16, device="cuda")
for _ in range(3):
    fn(*inp, out)
torch.cuda.synchronize()
print("done", T)
