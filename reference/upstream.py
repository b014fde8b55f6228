"""Upstream AniSOAP's own Python code, fetched with pip, as an oracle.

:func:`fetch_anisoap_source` downloads anisoap's source distribution with
``pip download anisoap==<version> --no-deps --no-binary :all:`` (so the
user's pip configuration applies: index, certificates, proxies), checks its
sha256 against the pinned one (:data:`SDIST_SHA256`; pip itself checks the
one the index states) and extracts it into a cache directory
(:func:`einsum_workbench.paths.upstream_cache_dir`).
:func:`import_upstream_anisoap` imports the ``anisoap`` package from that
source. Upstream's Rust extension ``anisoap_rust_lib`` cannot be built here (no
crate registry), so a stand-in module of that name supplies its only function,
``compute_moments(precision, center, maxdeg)``: either upstream's own Python
``compute_moments_inefficient_implementation`` (an oracle independent of the
workbench's moments) or the workbench's compiled ``reference.moments``.

Upstream 0.1.1 needs metatensor-core < 0.2 (it calls
``TensorMap.blocks_matching``), featomic, skmatter and wigners: the
``anisoap`` extra of this project.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

from einsum_workbench.paths import upstream_cache_dir

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "0.1.1"
#: sha256 of the source distributions this module has been checked against.
SDIST_SHA256 = {"0.1.1": "52ea43528d28b990830c5f42e206b2c02b0dd66a35163f48069c917d37f2ea0f"}
#: Modules upstream imports besides numpy, scipy, ase and tqdm.
UPSTREAM_DEPENDENCIES = ("metatensor", "featomic", "skmatter", "wigners")
MOMENTS = ("python", "numba")
#: Seconds ``pip download`` may take (it also builds the sdist's metadata in an
#: isolated environment: about 30 s for anisoap 0.1.1).
DEFAULT_TIMEOUT = 600.0
#: Lines of pip's output quoted in an error.
PIP_TAIL_LINES = 15


class UpstreamUnavailable(RuntimeError):
    """Upstream AniSOAP cannot be fetched or imported; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def default_cache_dir() -> Path:
    """Where :func:`fetch_anisoap_source` extracts by default:
    :func:`einsum_workbench.paths.upstream_cache_dir` (``<cache root>/upstream``,
    the root being ``$EINSUM_WORKBENCH_CACHE`` or the user cache folder)."""
    return upstream_cache_dir()


def _tail(text: str, lines: int = PIP_TAIL_LINES) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(no output)"


def pip_download_command(version: str, dest, index_url: str | None = None) -> list[str]:
    """The ``pip download`` command :func:`download_sdist` runs (this interpreter's pip).

    ``index_url`` adds ``--index-url`` (None: pip's own configuration decides).
    """
    command = [sys.executable, "-m", "pip", "download", f"anisoap=={version}",
               "--no-deps", "--no-binary", ":all:", "--dest", str(dest)]
    if index_url:
        command += ["--index-url", index_url]
    return command


def download_sdist(version: str, dest, *, index_url: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``anisoap-<version>.tar.gz`` into ``dest`` with ``pip download``.

    pip honours the user's configuration (``pip.conf``, ``PIP_*`` variables:
    index, certificates, proxies, retries) and checks the sha256 the index
    states, if any. Its output is logged at DEBUG level.

    Parameters
    ----------
    version : str
    dest : path, an existing folder
    index_url : str or None
        Passed as ``--index-url``; None leaves the choice to pip's configuration.
    timeout : float, seconds
        For the whole pip run.

    Returns
    -------
    Path of the downloaded archive.

    Raises
    ------
    UpstreamUnavailable
        pip fails (the index cannot be reached or has no such source
        distribution; the tail of pip's output is in the message), runs past
        ``timeout`` or leaves no archive.
    ValueError
        the download does not match the sha256 the index states.
    """
    command = pip_download_command(version, dest, index_url)
    logger.info("downloading anisoap==%s with pip (%s)", version, " ".join(command[1:]))
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = err.stderr or err.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        raise UpstreamUnavailable(
            f"cannot download anisoap=={version}: pip download ran past {timeout:g} s; pip:\n{_tail(output)}"
        ) from err
    except OSError as err:
        raise UpstreamUnavailable(f"cannot download anisoap=={version}: cannot run pip ({err})") from err
    seconds = time.perf_counter() - start
    logger.debug("pip download output:\n%s%s", result.stdout, result.stderr)
    if result.returncode != 0:
        output = _tail(result.stderr or result.stdout)
        if "DO NOT MATCH THE HASHES" in result.stderr:
            raise ValueError(f"sha256 mismatch for anisoap-{version}.tar.gz: the download differs from the "
                             f"sha256 the index states; pip:\n{output}")
        raise UpstreamUnavailable(
            f"cannot download anisoap=={version} with pip (exit status {result.returncode} after "
            f"{seconds:.1f} s: no such source distribution on the index, the index cannot be reached, "
            f"or pip failed); pip:\n{output}"
        )
    expected = Path(dest) / f"anisoap-{version}.tar.gz"
    archives = [expected] if expected.is_file() else sorted(Path(dest).glob("anisoap-*.tar.gz"))
    if len(archives) != 1:
        raise UpstreamUnavailable(
            f"pip download of anisoap=={version} left {[p.name for p in Path(dest).iterdir()]} in {dest}, "
            f"not one anisoap-{version}.tar.gz; pip:\n{_tail(result.stdout)}"
        )
    logger.info("downloaded %s (%d bytes) in %.1f s", archives[0].name, archives[0].stat().st_size, seconds)
    return archives[0]


def fetch_anisoap_source(
    version: str = DEFAULT_VERSION,
    cache_dir=None,
    *,
    index_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download, verify and extract anisoap's source distribution (once).

    Parameters
    ----------
    version : str
        anisoap version. Its sha256 is checked against ``SDIST_SHA256`` when
        pinned there; pip checks the one the index states.
    cache_dir : path or None
        Where the sdist is extracted; None means :func:`default_cache_dir`.
        A previous extraction there is reused without touching the network.
    index_url, timeout
        See :func:`download_sdist`.

    Returns
    -------
    Path of the extracted ``anisoap-<version>`` directory (holding the
    ``anisoap`` package).

    Raises
    ------
    UpstreamUnavailable
        pip cannot download it (see :func:`download_sdist`), or the archive
        holds no ``anisoap-<version>/anisoap`` package.
    ValueError
        the download's sha256 differs from the pinned one (both named) or
        from the one the index states.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"anisoap-{version}"
    marker = target / ".sha256-verified"
    if marker.is_file() and (target / "anisoap" / "__init__.py").is_file():
        logger.debug("anisoap %s source: cache hit at %s", version, target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download and extract beside the target, then rename: concurrent runs never see half a tree.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".extract-") as tmp:
        download = Path(tmp) / "download"
        download.mkdir()
        archive = download_sdist(version, download, index_url=index_url, timeout=timeout)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        expected = SDIST_SHA256.get(version)
        if expected is not None and digest != expected:
            raise ValueError(f"sha256 mismatch for {archive.name}: downloaded {digest}, expected {expected}")
        if expected is None:
            logger.warning("no sha256 pinned for anisoap %s: accepted %s on pip's check alone", version, digest)
        start = time.perf_counter()
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        extracted = Path(tmp) / f"anisoap-{version}"
        if not (extracted / "anisoap" / "__init__.py").is_file():
            raise UpstreamUnavailable(f"{archive.name} holds no anisoap-{version}/anisoap package")
        (extracted / ".sha256-verified").write_text(digest + "\n")
        if target.exists() and not marker.is_file():
            shutil.rmtree(target)
        try:
            os.replace(extracted, target)
        except OSError:
            if not marker.is_file():  # another process did not win the race either
                raise
        logger.info("extracted %s into %s in %.2f s", archive.name, target, time.perf_counter() - start)
    return target


def _moments_function(moments: str):
    """The ``compute_moments(precision, center, maxdeg)`` the stand-in serves."""
    if moments == "python":

        def compute_moments(precision, center, maxdeg):
            # upstream's own pure-Python recurrence: independent of the workbench
            from anisoap.utils.moment_generator import compute_moments_inefficient_implementation

            return compute_moments_inefficient_implementation(precision, center, maxdeg=maxdeg)

    elif moments == "numba":

        def compute_moments(precision, center, maxdeg):
            from einsum_workbench.reference.moments import compute_moments as workbench_moments

            return workbench_moments(precision, center, maxdeg)

    else:
        raise ValueError(f"moments must be one of {MOMENTS}, got {moments!r}")
    compute_moments.__doc__ = f"Stand-in for anisoap_rust_lib.compute_moments ({moments} moments)."
    return compute_moments


def rust_lib_standin(moments: str = "python") -> types.ModuleType:
    """A module named ``anisoap_rust_lib`` whose ``compute_moments`` is the
    chosen implementation (``moments`` is "python" or "numba")."""
    module = types.ModuleType("anisoap_rust_lib", "Stand-in for anisoap's Rust extension (einsum_workbench)")
    module.compute_moments = _moments_function(moments)
    module.__einsum_workbench_moments__ = moments
    return module


#: Source of the importable stand-in module, per ``moments`` choice.
_STANDIN_SOURCES = {
    "python": '''
def compute_moments(precision, center, maxdeg):
    # upstream's own pure-Python recurrence: independent of the workbench
    from anisoap.utils.moment_generator import compute_moments_inefficient_implementation

    return compute_moments_inefficient_implementation(precision, center, maxdeg=maxdeg)
''',
    "numba": '''
from einsum_workbench.reference.moments import compute_moments as _workbench_moments


def compute_moments(precision, center, maxdeg):
    # the workbench's compiled moments (numba, cached on disk), as upstream's are compiled (Rust)
    return _workbench_moments(precision, center, maxdeg)
''',
}


def write_rust_lib_standin(directory, moments: str = "numba") -> Path:
    """Write an importable stand-in ``anisoap_rust_lib`` module into ``directory``.

    For a subprocess (upstream's own test suite, scripts): with ``directory``
    on its ``PYTHONPATH``, ``from anisoap_rust_lib import compute_moments``
    works there as it does with upstream's compiled Rust extension.

    Parameters
    ----------
    directory : path
        Created if missing; ``anisoap_rust_lib.py`` is written (replaced) there.
    moments : {"python", "numba"}
        What ``compute_moments(precision, center, maxdeg)`` runs, as in
        :func:`rust_lib_standin`: upstream's Python
        ``compute_moments_inefficient_implementation`` or the workbench's
        compiled ``reference.moments.compute_moments`` (the workbench must then
        be importable in the subprocess, as it is once installed).

    Returns
    -------
    Path of the written ``anisoap_rust_lib.py``.

    Raises
    ------
    ValueError
        ``moments`` is not one of ``MOMENTS``.
    """
    if moments not in _STANDIN_SOURCES:
        raise ValueError(f"moments must be one of {MOMENTS}, got {moments!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "anisoap_rust_lib.py"
    path.write_text(
        f'"""Stand-in for anisoap\'s Rust extension anisoap_rust_lib ({moments} moments; '
        f'written by einsum_workbench.reference.upstream)."""\n'
        f"__einsum_workbench_moments__ = {moments!r}\n" + _STANDIN_SOURCES[moments]
    )
    return path


def _check_dependencies():
    missing = []
    for name in UPSTREAM_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a broken install is as unusable as a missing one
            missing.append(f"{name} ({type(err).__name__}: {err})")
    if missing:
        raise UpstreamUnavailable(
            "upstream AniSOAP needs " + ", ".join(missing)
            + "; install the extra: pip install 'einsum-workbench[anisoap]'"
        )
    import metatensor

    if not hasattr(metatensor.TensorMap, "blocks_matching"):
        raise UpstreamUnavailable(
            "upstream AniSOAP 0.1.1 calls TensorMap.blocks_matching, which this metatensor-core "
            "lacks; install metatensor-core<0.2"
        )


def import_upstream_anisoap(moments: str = "python", version: str = DEFAULT_VERSION, cache_dir=None):
    """Import upstream ``anisoap`` from its fetched source distribution.

    Parameters
    ----------
    moments : {"python", "numba"}
        What the stand-in ``anisoap_rust_lib.compute_moments`` runs: upstream's
        own Python ``compute_moments_inefficient_implementation`` or the
        workbench's compiled ``reference.moments.compute_moments``. A later call
        with another choice switches it (also where upstream bound it by name).
    version, cache_dir
        See :func:`fetch_anisoap_source`.

    Returns
    -------
    the ``anisoap`` module.

    Raises
    ------
    UpstreamUnavailable
        the source cannot be fetched, a dependency is missing or too new, or
        another ``anisoap`` is already imported.
    """
    standin = rust_lib_standin(moments)
    source = fetch_anisoap_source(version, cache_dir).resolve()
    _check_dependencies()
    loaded = sys.modules.get("anisoap")
    if loaded is not None and not Path(loaded.__file__).resolve().is_relative_to(source):
        raise UpstreamUnavailable(f"another anisoap is already imported from {loaded.__file__}")
    sys.modules["anisoap_rust_lib"] = standin
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
    try:
        anisoap = importlib.import_module("anisoap")
        projection = importlib.import_module("anisoap.representations.ellipsoidal_density_projection")
    except ImportError as err:
        raise UpstreamUnavailable(f"upstream anisoap from {source} does not import: {err}") from err
    projection.compute_moments = standin.compute_moments  # bound by name at upstream's import
    return anisoap
