"""The opt_einsum family: the pair expansion planned once by opt_einsum (:mod:`.pairs`)."""
