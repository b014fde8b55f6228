"""What the problem is: the reference implementation of AniSOAP's
``pairwise_ellip_expansion`` and everything it needs.

Data flows one way: frames -> atom arrays (:mod:`.frames`) -> neighbour pairs
(:mod:`.neighbours`, :mod:`.pairs`: a pair batch) -> a variant (the reference
loop in :mod:`.expansion`) -> coefficients -> optionally orthonormalised
(:mod:`.radial`), summed per centre (:mod:`.density`), differentiated
(:mod:`.gradients`). The hyper-parameters are in :mod:`.hypers` (the optional
smooth cutoff in :mod:`.cutoff`), the limits
every variant admits in :mod:`.limits`, the checks that enforce them in
:mod:`.validation`.
"""

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.cutoff import ShiftedCosine
from einsum_workbench.reference.expansion import pairwise_ellip_expansion

__all__ = ["ExpansionHypers", "ShiftedCosine", "pairwise_ellip_expansion"]
