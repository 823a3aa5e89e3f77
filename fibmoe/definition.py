"""Our flashinfer-bench Definitions of the operator, with fibmoe's own reference embedded."""

from pathlib import Path

from .geometry import BLOCK, N_GROUP, TOP_K, TOPK_GROUP, Geometry

REFERENCE_SOURCE = Path(__file__).with_name("reference.py")


def build_definition(g: Geometry):
    from flashinfer_bench import Definition

    h, i = g.hidden_size, g.intermediate_size
    axes = {
        "seq_len": {"type": "var", "description": "tokens in the batch (T)"},
        "num_experts": {"type": "const", "value": g.num_experts, "description": "global experts"},
        "num_local_experts": {"type": "const", "value": g.num_local_experts, "description": "experts on this rank"},
        "hidden_size": {"type": "const", "value": h},
        "intermediate_size": {"type": "const", "value": i},
        "gemm1_out_size": {"type": "const", "value": 2 * i},
        "num_hidden_blocks": {"type": "const", "value": h // BLOCK},
        "num_intermediate_blocks": {"type": "const", "value": i // BLOCK},
        "num_gemm1_out_blocks": {"type": "const", "value": 2 * i // BLOCK},
    }

    def t(shape, dtype, description=None):
        return {"shape": shape, "dtype": dtype, "description": description}

    inputs = {
        "routing_logits": t(["seq_len", "num_experts"], "float32", "router logits over all experts"),
        "routing_bias": t(["num_experts"], "bfloat16", "per-expert bias added to sigmoid scores for selection"),
        "hidden_states": t(["seq_len", "hidden_size"], "float8_e4m3fn"),
        "hidden_states_scale": t(
            ["num_hidden_blocks", "seq_len"], "float32", "block-major: the token index is contiguous"
        ),
        "gemm1_weights": t(["num_local_experts", "gemm1_out_size", "hidden_size"], "float8_e4m3fn"),
        "gemm1_weights_scale": t(["num_local_experts", "num_gemm1_out_blocks", "num_hidden_blocks"], "float32"),
        "gemm2_weights": t(["num_local_experts", "hidden_size", "intermediate_size"], "float8_e4m3fn"),
        "gemm2_weights_scale": t(["num_local_experts", "num_hidden_blocks", "num_intermediate_blocks"], "float32"),
        "local_expert_offset": t(None, "int32", "global id of this rank's first expert"),
        "routed_scaling_factor": t(None, "float32"),
    }
    return Definition(
        name=g.name,
        op_type="moe",
        description=(
            f"FP8 block-scale (block {BLOCK}) DeepSeek-V3 routed MoE, one expert-parallel rank: "
            f"{g.num_experts} experts in {N_GROUP} groups, top-{TOPK_GROUP} groups, top-{TOP_K} experts, "
            f"{g.num_local_experts} local experts, H={h}, I={i}; SwiGLU is silu(second half) * first half."
        ),
        tags=["fibmoe", "status:verified"],
        axes=axes,
        inputs=inputs,
        outputs={"output": t(["seq_len", "hidden_size"], "bfloat16", "this rank's partial sum")},
        reference=REFERENCE_SOURCE.read_text(),
    )
