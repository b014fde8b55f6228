"""The generated sources of the three CuPy kernels (pairs, centre density, gradients).

- Everywhere: importing a kernel module and generating its source imports no CuPy.
- Where nvcc is installed: the RawModule source compiled by nvcc for sm_90,
  every kernel in ptxas' report (``tools/check_cuda_compile.sh`` does the same
  for every representative set).
- Where CuPy's NVRTC is installed: what ``cupy.RawModule`` does on an sm_90
  device, minus loading the cubin. CuPy 14 compiles RawModule code with NVRTC
  using the module's options plus ``-arch=sm_<cc>`` and
  ``--device-as-default-execution-space``
  (cupy.cuda.compiler._compile_using_nvrtc_no_warning); these tests call the
  same NVRTC program class with those options. No device is needed to compile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from einsum_workbench.kernels.cupy import density, gradients, pairs
from einsum_workbench.kernels.cupy.common import nvrtc_options
from einsum_workbench.kernels.cupy.compile_check import representative_hypers

#: problem -> (its kernel source as a function of the hypers, the kernels the module defines)
KERNELS = {
    "pairs": (pairs.kernel_source, tuple(pairs.KERNEL_NAMES.values())),
    "density": (density.kernel_source, (*density.KERNEL_NAMES.values(), *density.COMBINE_NAMES.values())),
    "gradients": (gradients.kernel_source, tuple(gradients.KERNEL_NAMES.values())),
}
WERROR = ("-Werror", "all-warnings")


@pytest.mark.parametrize("problem", KERNELS)
def test_module_import_does_not_import_cupy(problem):
    code = (f"import sys; import einsum_workbench.kernels.cupy.{problem} as m; "
            "from einsum_workbench.reference.hypers import ExpansionHypers; "
            "m.kernel_source(ExpansionHypers(6, 'gto', cutoff=7.0, sigma=1.5)); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the sm_90 compile check did not run")
@pytest.mark.parametrize("problem,name,warnings", [
    pytest.param("pairs", "lmax6_gto_default", (), id="pairs-lmax6_gto_default"),
    pytest.param("density", "lmax6_gto_default", WERROR, id="density-lmax6_gto_default-Werror"),
    pytest.param("gradients", "lmax6_gto_default", WERROR, id="gradients-lmax6_gto_default-Werror"),
    pytest.param("gradients", "lmax8_monomial_list", WERROR, id="gradients-lmax8_monomial_list-Werror"),
])
def test_kernel_compiles_with_nvcc_for_sm90(tmp_path, problem, name, warnings):
    kernel_source, kernels = KERNELS[problem]
    source = tmp_path / f"{problem}.cu"
    source.write_text(kernel_source(representative_hypers()[name]))
    result = subprocess.run(
        ["nvcc", "-arch=sm_90", "--cubin", "-std=c++17", "-Xptxas", "-v", *warnings,
         "-o", str(tmp_path / f"{problem}.cubin"), str(source)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-4000:]}"
    for kernel in kernels:
        assert kernel in result.stderr, f"{kernel} missing from the ptxas report"


def _cupy_nvrtc_program():
    """CuPy's NVRTC program class and NVRTC's version, or a skip naming what is missing."""
    try:
        from cupy.cuda import compiler

        return compiler._NVRTCProgram, compiler._get_nvrtc_version()
    except Exception as err:  # cupy absent, or no libnvrtc (pip nvidia-cuda-nvrtc-cu12)
        pytest.skip(f"CuPy's NVRTC is not usable here ({type(err).__name__}: {err}): "
                    "the NVRTC compile of the RawModule source did not run")


@pytest.mark.parametrize("problem,name,max_registers", [
    ("pairs", "lmax6_gto_default", 168),
    ("pairs", "lmax8_monomial_list", 168),
    ("density", "lmax6_gto_default", 168),
    ("density", "lmax0_gto_int", 168),
    ("gradients", "lmax6_gto_default", None),
])
def test_rawmodule_source_compiles_with_nvrtc_for_sm90(problem, name, max_registers):
    program_class, version = _cupy_nvrtc_program()
    kernel_source, kernels = KERNELS[problem]
    program = program_class(kernel_source(representative_hypers()[name]), f"wb_{problem}.cu", (), (),
                            name_expressions=None, method="cubin")
    cubin, _ = program.compile(nvrtc_options(max_registers) + ("-arch=sm_90", "--device-as-default-execution-space"))
    for kernel in kernels:
        assert kernel.encode() in cubin, f"{kernel} missing from the NVRTC {version} cubin"
