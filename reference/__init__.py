"""What the problem is: the reference implementation of AniSOAP's
``pairwise_ellip_expansion`` and everything it needs.

Data flows one way: frames -> neighbour pairs (:mod:`.pairs`) -> a pair batch
-> a variant (the reference loop in :mod:`.expansion`) -> coefficients ->
optionally orthonormalised (:mod:`.radial`).
"""

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.expansion import pairwise_ellip_expansion

__all__ = ["ExpansionHypers", "pairwise_ellip_expansion"]
