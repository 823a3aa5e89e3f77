"""fibmoe.sass on a made-up listing in cuobjdump's format: spills inside the innermost MMA loops are
counted, those of the loop around them and of loops without MMAs are not; those in a stretch the loop
jumps over (an epilogue once every N steps) are counted apart."""

from fibmoe import sass

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R2 ;
        /*0020*/                   LDL R3, [R1] ;
        /*0030*/                   QGMMA.64x16x32.F32.E4M3.E4M3 R24, gdesc[UR4], R24 ;
        /*0040*/                   LDL R4, [R1+0x4] ;
        /*0050*/                   STL [R1+0x8], R5 ;
        /*0060*/              @P0  BRA 0x20 ;
        /*0070*/                   LDL R6, [R1+0xc] ;
        /*0080*/                   IADD3 R7, R7, 0x1, RZ ;
        /*0090*/              @P1  BRA 0x10 ;
        /*00a0*/                   LDL R8, [R1+0x10] ;
        /*00b0*/              @P2  BRA 0xa0 ;
        /*00c0*/                   EXIT ;
"""


def test_only_the_innermost_mma_loop_counts():
    assert sass.mma_loops(LISTING) == [(0x20, 0x60)]  # 0x10..0x90 holds it; 0xa0..0xb0 has no MMA
    assert sass.hot_loop_spills(LISTING) == dict(loop_spills=3, branch_spills=0)  # LDL 0x20, 0x40, STL 0x50


def test_no_loop_no_spill():
    straight = "/*0000*/ QGMMA.64x16x32 R0, gdesc[UR4], R0 ;\n/*0010*/ LDL R1, [R2] ;\n/*0020*/ EXIT ;"
    assert sass.mma_loops(straight) == [] and sass.hot_loop_spills(straight) == dict(loop_spills=0, branch_spills=0)


EPILOGUE_IN_LOOP = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   QGMMA.64x16x32.F32.E4M3.E4M3 R24, gdesc[UR4], R24 ;
        /*0020*/                   LDL R2, [R1] ;
        /*0030*/              @P6  BRA 0x70 ;
        /*0040*/                   LDL R3, [R1+0x4] ;
        /*0050*/                   STL [R1+0x8], R4 ;
        /*0060*/                   STG.E.128 desc[UR4][R8.64], R12 ;
        /*0070*/                   IADD3 R7, R7, 0x1, RZ ;
        /*0080*/              @P0  BRA 0x90 ;
        /*0090*/                   LDL R5, [R1+0xc] ;
        /*00a0*/              @P1  BRA 0x10 ;
        /*00b0*/              @P2  BRA 0xc0 ;
        /*00c0*/                   EXIT ;
"""


def test_spills_the_loop_jumps_over_are_counted_apart():
    # 0x40..0x60 is skipped by the branch at 0x30 (an epilogue); the branch at 0x80 skips nothing
    assert sass.mma_loops(EPILOGUE_IN_LOOP) == [(0x10, 0xA0)]
    # every iteration: LDL at 0x20 and 0x90; skipped by the branch at 0x30: LDL at 0x40, STL at 0x50
    assert sass.hot_loop_spills(EPILOGUE_IN_LOOP) == dict(loop_spills=2, branch_spills=2)
