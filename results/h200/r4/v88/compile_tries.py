"""Offline compile report of rung 4's fused kernel with tile fields replaced (the record behind v86 / v88's
offline numbers; scripts/compile_check.py builds only the table's shapes). From the repository root:
    .venv/bin/python results/h200/r4/v88/compile_tries.py T CAP "" "field=v,field=v" ...
("" is the table itself; bool fields as 0/1)."""
import dataclasses
import sys

sys.path.insert(0, "scripts")
sys.path.insert(0, ".")
import compile_check as cc
import torch
m = cc.load_entry_module("r4-fused-persistent")
pkg = sys.modules[m.__package__ + ".persistent"]; tiles = sys.modules[m.__package__ + ".tiles"]
T = int(sys.argv[1]); cap = int(sys.argv[2])
for spec in sys.argv[3:]:
    fields = dict((k, int(v)) for k, v in (x.split("=") for x in spec.split(",") if x))
    t = dataclasses.replace(tiles.tiles_for(T, cap), **{k: (bool(v) if isinstance(getattr(tiles.tiles_for(T, cap), k), bool) else v) for k, v in fields.items()})
    E, NL, H, I = (m.CONTEST[k] for k in ("E", "NL", "H", "I"))
    args = m.meta_call_arguments(T, E, NL, H, I)
    ws = pkg.Workspace(torch.device("meta"), T, E, NL, H, I, t, cap, 132)
    name, fn, a, consts, opts = m.compile_entry(ws.kernel, (*args[:8], args[10], *ws.scratch, T, args[8], args[9]))
    r = cc.compile_one(fn, a, consts, opts, cap)
    print(spec or "table", f"regs={r['regs']} stack={r['stack']} smem={r['smem']} loop_spills={r['loop_spills']} branch_spills={r['branch_spills']} {r['sass']}", flush=True)
