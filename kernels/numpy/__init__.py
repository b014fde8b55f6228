"""The NumPy family: the batched pair expansion (:mod:`.pairs`) and the centre density as its
segment sum (:mod:`.density`)."""
