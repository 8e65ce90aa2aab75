"""Numeric core: VBMF rank selection, Tucker and SVD factorizations, cost model.

Plain numpy/scipy; nothing here imports onnx, so every function can be tested on
arrays alone.
"""

from wnc_onnx.analyze.numeric.cost import Costs, conv_costs, lowrank_costs
from wnc_onnx.analyze.numeric.gram import mode_gram, sym_eig_top, sym_eigvals
from wnc_onnx.analyze.numeric.svd import LowRankFactors, truncated_svd
from wnc_onnx.analyze.numeric.tucker import Tucker1, Tucker2, tucker1, tucker2
from wnc_onnx.analyze.numeric.vbmf import EVBMFResult, evbmf, evbmf_from_eigenvalues

__all__ = [
    "Costs",
    "EVBMFResult",
    "LowRankFactors",
    "Tucker1",
    "Tucker2",
    "conv_costs",
    "evbmf",
    "evbmf_from_eigenvalues",
    "lowrank_costs",
    "mode_gram",
    "sym_eig_top",
    "sym_eigvals",
    "truncated_svd",
    "tucker1",
    "tucker2",
]
