"""The operator's geometry: the contest definition and a small one of the same operator for CPU tests."""

from dataclasses import dataclass

BLOCK = 128
TOP_K = 8
N_GROUP = 8
TOPK_GROUP = 4


@dataclass(frozen=True)
class Geometry:
    num_experts: int
    num_local_experts: int
    hidden_size: int
    intermediate_size: int

    @classmethod
    def from_definition(cls, definition) -> "Geometry":
        """The geometry of any flashinfer-bench definition of this operator, from its constant axes."""
        axes = definition.const_axes
        return cls(axes["num_experts"], axes["num_local_experts"], axes["hidden_size"], axes["intermediate_size"])

    @property
    def name(self) -> str:
        return (
            f"moe_fp8_block_scale_ds_routing_topk{TOP_K}_ng{N_GROUP}_kg{TOPK_GROUP}"
            f"_e{self.num_local_experts}_h{self.hidden_size}_i{self.intermediate_size}"
        )

    @property
    def gemm1_out_size(self) -> int:
        return 2 * self.intermediate_size

    def weight_bytes_per_expert(self) -> int:
        """FP8 weights of GEMM1 and GEMM2 plus their fp32 block scales."""
        h, i = self.hidden_size, self.intermediate_size
        scales = (2 * i // BLOCK) * (h // BLOCK) + (h // BLOCK) * (i // BLOCK)
        return 3 * h * i + 4 * scales

    def bytes_per_token(self) -> int:
        """Activations in (fp8 + scales), routing logits in, bf16 output out."""
        h = self.hidden_size
        return h + 4 * (h // BLOCK) + 4 * self.num_experts + 2 * h

    def flops_per_local_row(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        return 2 * h * 2 * i + 2 * i * h


CONTEST = Geometry(num_experts=256, num_local_experts=32, hidden_size=7168, intermediate_size=2048)
SMALL = Geometry(num_experts=64, num_local_experts=16, hidden_size=256, intermediate_size=128)
GEOMETRIES = {"contest": CONTEST, "small": SMALL}
