"""An ASE calculator for a model on AniSOAP's power spectrum: energy, forces, stress, torques.

:class:`AniSOAPCalculator` evaluates ``E = w . x`` (or ``E = module(x)`` for a
Torch module) with ``x`` the per-structure power spectrum of
:func:`einsum_workbench.pipeline.power_spectrum.power_spectrum` laid out on
fixed columns: those of every (centre species, neighbour species) pair of
the calculator's ``species`` (:func:`species_properties`), zeros where a
species is absent from the frame. Forces, torques and stress come from one
backward pass (DESIGN.md section 3, "Power spectrum backward" then
"Backward pass"): ``dE/dx`` -> ``dE/drho`` -> one backward variant call ->
per-pair ``dE/dr_ij``, ``dE/dtheta_j`` summed onto atoms
(:mod:`einsum_workbench.pipeline.forces`); no per-pair Jacobian is written.

Conventions (ASE's): energy in the weights' unit (eV for a model fitted in
eV), forces ``-dE/dx`` (eV/angstrom), stress ``(1/V) dE/deps`` for the
strain ``cell -> cell (I + eps)`` with atoms scaled and orientations held,
symmetrised, in Voigt order xx, yy, zz, yz, xz, xy (eV/angstrom^3; periodic
frames only). ``results["torques"]`` is ``-dE/dtheta`` (N, 3), per radian of
rotation of each ellipsoid's body frame about each lab axis.
"""

from __future__ import annotations

import sys

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from einsum_workbench.reference.hypers import ExpansionHypers
from einsum_workbench.reference.validation import check_hypers

from einsum_workbench.pipeline.forces import voigt_stress
from einsum_workbench.pipeline.power_spectrum import power_spectrum_pass

#: What needs the backward pass.
_BACKWARD_PROPERTIES = ("forces", "stress", "torques")


def check_species(species) -> np.ndarray:
    """``species`` as a (S,) int64 array of strictly increasing atomic numbers.

    Raises
    ------
    TypeError
        an entry that is neither an integer nor a chemical symbol.
    ValueError
        an empty list, an unknown symbol, a negative number, or numbers not
        strictly increasing (the columns follow their order: the list named).
    """
    from ase.data import atomic_numbers

    numbers = []
    for s in list(species):
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise ValueError(f"species {s!r} is not a chemical symbol")
            numbers.append(atomic_numbers[s])
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            numbers.append(int(s))
        else:
            raise TypeError(f"species must be atomic numbers or chemical symbols, got {s!r}")
    numbers = np.asarray(numbers, dtype=np.int64)
    if len(numbers) == 0:
        raise ValueError("species must name at least one atomic number")
    if numbers.min() < 0 or np.any(np.diff(numbers) <= 0):
        raise ValueError(f"species must be strictly increasing non-negative atomic numbers (the feature columns "
                         f"follow their order), got {numbers.tolist()}")
    return numbers


def species_properties(species, hypers: ExpansionHypers) -> np.ndarray:
    """The fixed power-spectrum columns of ``species``: (n_features, 7) int32 rows
    ``(types_center, n_a, e_a, l, n_b, e_b, l)`` (``PowerSpectrum.names``).

    Per centre species c (ascending), per l, every pair of density columns
    ``(n, e)`` listed species-major, as ``power_spectrum`` lists them for a
    frame in which every centre species has pairs with every neighbour
    species: ``n_features = S * sum_l (num_radial[l] * S)^2``.
    """
    species = check_species(species)
    rows = []
    for c in species:
        for l, n_radial in enumerate(hypers.num_radial):
            e = np.repeat(species, n_radial)
            n = np.tile(np.arange(n_radial), len(species))
            q = len(e)
            a, b = np.repeat(np.arange(q), q), np.tile(np.arange(q), q)
            rows.append(np.stack([np.full(q * q, c), n[a], e[a], np.full(q * q, l), n[b], e[b],
                                  np.full(q * q, l)], axis=1))
    return np.vstack(rows).astype(np.int32)


def species_columns(properties, species, hypers: ExpansionHypers) -> np.ndarray:
    """Where each column of a frame's ``PowerSpectrum.properties`` sits among :func:`species_properties`.

    Parameters
    ----------
    properties : (F, 7) int rows ``(types_center, n_a, e_a, l, n_b, e_b, l)``
    species : strictly increasing atomic numbers, holding every species in ``properties``
    hypers : ExpansionHypers

    Returns
    -------
    (F,) int64 column indices into the ``S * sum_l (num_radial[l] S)^2`` fixed columns.
    """
    species = check_species(species)
    properties = np.asarray(properties, dtype=np.int64).reshape(-1, 7)
    n_radial = np.asarray(hypers.num_radial, dtype=np.int64)
    widths = (n_radial * len(species)) ** 2
    per_centre = int(widths.sum())
    l_start = np.concatenate([[0], np.cumsum(widths)[:-1]])
    centre, n_a, e_a, l, n_b, e_b = (properties[:, k] for k in range(6))
    q = n_radial[l] * len(species)
    a = np.searchsorted(species, e_a) * n_radial[l] + n_a
    b = np.searchsorted(species, e_b) * n_radial[l] + n_b
    return np.searchsorted(species, centre) * per_centre + l_start[l] + a * q + b


def _torch_module(model):
    """The model itself if it is a ``torch.nn.Module`` (Torch not imported for plain weights), else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return model
    return None


class AniSOAPCalculator(Calculator):
    """ASE calculator of a model on the per-structure power spectrum (module docstring).

    Parameters
    ----------
    hypers : ExpansionHypers
        Those the model was fitted with (lmax, basis, cutoff in angstrom, sigma).
    weights : (n_features,) float array, or a ``torch.nn.Module``
        A linear model, ``E = weights @ x``, on the columns of
        :func:`species_properties` (``n_features = S * sum_l (num_radial[l]
        S)^2``); or a Torch module, ``E = module(x)`` on ``x`` of shape (1,
        n_features) in the module's dtype, returning one number (``dE/dx`` by
        Torch autograd on x only: the module's parameters get no gradient).
    species : sequence of int or str
        Strictly increasing atomic numbers (or symbols) the columns are built on.
    backend : str
        Density variant, and the backward variant unless ``backward_backend``
        names another (``kernels.registry.variant_names("backward")``).
    backward_backend : str or None
    semiaxes, rotation_key
        As :func:`einsum_workbench.pipeline.density.centre_density`: None
        reads ``c_diameter[k] / 2``; ``rotation_key=None`` takes every
        orientation as the identity.
    smooth_cutoff : None or ``reference.cutoff.ShiftedCosine``
        Needed for a continuous energy (molecular dynamics): the hard cutoff
        makes E jump when a pair crosses it.
    **kwargs
        ``ase.calculators.calculator.Calculator``'s (label, ...).

    ``implemented_properties``: energy, free_energy (the same), forces,
    stress (fully periodic frames only), torques (N, 3). ``calculate`` runs
    the backward pass only for forces, stress or torques, and computes all
    three from it; an energy alone runs the forward pass only.

    Raises
    ------
    TypeError, ValueError
        bad hypers or species; weights of the wrong length (both numbers
        named) or not finite.
    KeyError, RuntimeError
        no density or backward variant of that name, or one that cannot run here.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "torques"]

    def __init__(self, hypers: ExpansionHypers, weights, species, *, backend: str = "numba_fused",
                 backward_backend: str | None = None, semiaxes=None, rotation_key: str | None = "c_q",
                 smooth_cutoff=None, **kwargs):
        super().__init__(**kwargs)
        check_hypers(hypers)
        self.hypers = hypers
        self.species = check_species(species)
        self.n_features = len(species_properties(self.species, hypers))
        self.module = _torch_module(weights)
        self.weights = None if self.module is not None else self._checked_weights(weights)
        self.options = dict(backend=backend, backward_backend=backward_backend, semiaxes=semiaxes,
                            rotation_key=rotation_key, smooth_cutoff=smooth_cutoff)
        self._forward = None
        from einsum_workbench.pipeline.forces import load_backward, load_density

        load_density(backend, smooth_cutoff)  # a missing variant fails here, not at the first step
        load_backward(backend if backward_backend is None else backward_backend, smooth_cutoff)

    def _checked_weights(self, weights) -> np.ndarray:
        array = np.asarray(weights)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"weights must be a real array or a torch.nn.Module, got {type(weights).__name__} "
                            f"of dtype {array.dtype}")
        array = array.astype(np.float64).reshape(-1) if array.ndim <= 1 else array
        if array.shape != (self.n_features,):
            raise ValueError(f"weights has shape {np.shape(weights)} ({array.size} entries) but the power spectrum "
                             f"over species {self.species.tolist()} at lmax {self.hypers.lmax} has "
                             f"{self.n_features} features")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"weights has a non-finite entry at index {int(np.argmax(~np.isfinite(array)))}")
        return array

    def reset(self):
        super().reset()
        self._forward = None

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus ``"orientations"`` when the rotation or diameter arrays changed
        (ASE compares positions, numbers, cell and pbc only)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and "orientations" not in changes:
            keys = {k for k in list(atoms.arrays) + list(self.atoms.arrays)
                    if k == self.options["rotation_key"] or k.startswith("c_diameter")}
            for key in keys:
                old, new = self.atoms.arrays.get(key), atoms.arrays.get(key)
                if old is None or new is None or old.shape != new.shape or np.any(old != new):
                    changes.append("orientations")
                    break
        return changes

    def _check_atoms(self, atoms):
        numbers = np.unique(atoms.numbers)
        unknown = numbers[~np.isin(numbers, self.species)]
        if len(unknown):
            raise ValueError(f"atoms hold species {unknown.tolist()} that are not among the calculator's species "
                             f"{self.species.tolist()}")

    def features(self, atoms):
        """(x (n_features,) float64 on the fixed columns, the forward pass, the columns it fills)."""
        self._check_atoms(atoms)
        run = power_spectrum_pass([atoms], self.hypers, **self.options)
        columns = species_columns(run.properties, self.species, self.hypers)
        x = np.zeros(self.n_features)
        x[columns] = run.values[0]
        return x, run, columns

    def _energy(self, x, gradient: bool):
        """(E, dE/dx (n_features,) or None)."""
        if self.module is None:
            return float(x @ self.weights), (self.weights if gradient else None)
        import torch

        parameter = next(self.module.parameters(), None)
        dtype = torch.float64 if parameter is None else parameter.dtype
        inputs = torch.tensor(x[None], dtype=dtype, requires_grad=gradient)
        with torch.set_grad_enabled(gradient):
            out = self.module(inputs)
            if out.numel() != 1:
                raise ValueError(f"the Torch module must return one energy for x of shape {tuple(inputs.shape)}, "
                                 f"got shape {tuple(out.shape)}")
            if not gradient:
                return float(out), None
            (dE_dx,) = torch.autograd.grad(out.sum(), inputs)
        return float(out.detach()), dE_dx.detach().to(torch.float64).numpy()[0]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute what ``properties`` asks into ``self.results`` (class docstring).

        Raises
        ------
        ValueError
            a species not among the calculator's (both lists named).
        PropertyNotImplementedError
            stress of a frame not periodic along all three axes (its pbc named).
        """
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        need_backward = any(p in properties for p in _BACKWARD_PROPERTIES)
        if "stress" in properties and not atoms.pbc.all():
            raise PropertyNotImplementedError(f"stress needs a frame periodic along all three axes, got pbc = "
                                              f"{atoms.pbc.tolist()}")
        if system_changes or self._forward is None:
            self._forward = self.features(atoms)
        x, run, columns = self._forward
        energy, dE_dx = self._energy(x, need_backward)
        self.results["energy"] = self.results["free_energy"] = energy
        if not need_backward:
            return
        result = run.backward(dE_dx[columns][None])
        self.results["forces"] = result.forces
        self.results["torques"] = result.torques
        if atoms.pbc.all():
            self.results["stress"] = voigt_stress(result.stress[0])


__all__ = ["AniSOAPCalculator", "check_species", "species_columns", "species_properties"]
