"""The Torch family: pair expansion (:mod:`.pairs`), centre density (:mod:`.density`),
gradients by autograd (:mod:`.gradients`). Importing this package imports no Torch."""
