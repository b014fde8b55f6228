"""Upstream AniSOAP's own Python code, fetched from the package index, as an oracle.

:func:`fetch_anisoap_source` downloads anisoap's source distribution from the
package index's simple (PEP 503) page, checks its sha256 (pinned for 0.1.1,
and the one the index states), and extracts it into a cache directory.
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
import html.parser
import importlib
import os
import shutil
import ssl
import sys
import tarfile
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_VERSION = "0.1.1"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
#: sha256 of the source distributions this module has been checked against.
SDIST_SHA256 = {"0.1.1": "52ea43528d28b990830c5f42e206b2c02b0dd66a35163f48069c917d37f2ea0f"}
#: Modules upstream imports besides numpy, scipy, ase and tqdm.
UPSTREAM_DEPENDENCIES = ("metatensor", "featomic", "skmatter", "wigners")
MOMENTS = ("python", "numba")


class UpstreamUnavailable(RuntimeError):
    """Upstream AniSOAP cannot be fetched or imported; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def default_cache_dir() -> Path:
    """``$EINSUM_WORKBENCH_CACHE``, else ``$XDG_CACHE_HOME/einsum_workbench``,
    else ``~/.cache/einsum_workbench``."""
    if os.environ.get("EINSUM_WORKBENCH_CACHE"):
        return Path(os.environ["EINSUM_WORKBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "einsum_workbench"


def _ssl_context():
    """Default SSL context, using the CA bundle pip is told to use when set."""
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            return ssl.create_default_context(cafile=path)
    return ssl.create_default_context()


def _download(url: str, timeout: float) -> bytes:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file" and os.path.isdir(urllib.request.url2pathname(parsed.path)):
        url = url.rstrip("/") + "/index.html"  # a simple index on disk, as pip reads one
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_ssl_context()) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise UpstreamUnavailable(f"cannot download {url}: {err}") from err


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def find_sdist(version: str = DEFAULT_VERSION, index_url: str | None = None, timeout: float = 60.0):
    """URL and sha256 of ``anisoap-<version>.tar.gz`` on a PEP 503 simple index.

    Parameters
    ----------
    version : str
    index_url : str or None
        Base of the simple index; None means ``$EINSUM_WORKBENCH_INDEX_URL`` or
        ``https://pypi.org/simple``.
    timeout : float, seconds

    Returns
    -------
    (url, sha256) : (str, str or None)

    Raises
    ------
    UpstreamUnavailable
        the index cannot be reached or does not list that file.
    """
    index_url = (index_url or os.environ.get("EINSUM_WORKBENCH_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")
    page_url = f"{index_url}/anisoap/"
    parser = _LinkParser()
    parser.feed(_download(page_url, timeout).decode("utf-8", errors="replace"))
    filename = f"anisoap-{version}.tar.gz"
    for href in parser.links:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if url.rsplit("/", 1)[-1] == filename:
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return url, digest
    raise UpstreamUnavailable(f"the index page {page_url} lists no {filename}")


def fetch_anisoap_source(
    version: str = DEFAULT_VERSION,
    cache_dir=None,
    *,
    index_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and extract anisoap's source distribution (once).

    Parameters
    ----------
    version : str
        anisoap version; its sha256 must be in ``SDIST_SHA256`` or stated by
        the index.
    cache_dir : path or None
        Where the sdist is extracted; None means :func:`default_cache_dir`.
        A previous extraction there is reused without touching the network.
    index_url, timeout
        See :func:`find_sdist`.

    Returns
    -------
    Path of the extracted ``anisoap-<version>`` directory (holding the
    ``anisoap`` package).

    Raises
    ------
    UpstreamUnavailable
        the index or the file cannot be reached, or no hash is known.
    ValueError
        the download's sha256 differs from the expected one (both named).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"anisoap-{version}"
    marker = target / ".sha256-verified"
    if marker.is_file() and (target / "anisoap" / "__init__.py").is_file():
        return target
    url, index_digest = find_sdist(version, index_url, timeout)
    expected = SDIST_SHA256.get(version, index_digest)
    if expected is None:
        raise UpstreamUnavailable(f"no sha256 known for {url}: the index states none and none is pinned")
    payload = _download(url, timeout)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected or (index_digest is not None and index_digest != expected):
        raise ValueError(
            f"sha256 mismatch for {url}: downloaded {digest}, index states {index_digest}, expected {expected}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Extract beside the target, then rename: concurrent runs never see half a tree.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".extract-") as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[-1]
        archive.write_bytes(payload)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        extracted = Path(tmp) / f"anisoap-{version}"
        if not (extracted / "anisoap" / "__init__.py").is_file():
            raise UpstreamUnavailable(f"{url} holds no anisoap-{version}/anisoap package")
        (extracted / ".sha256-verified").write_text(digest + "\n")
        if target.exists() and not marker.is_file():
            shutil.rmtree(target)
        try:
            os.replace(extracted, target)
        except OSError:
            if not marker.is_file():  # another process did not win the race either
                raise
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
            from .moments import compute_moments as workbench_moments

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
