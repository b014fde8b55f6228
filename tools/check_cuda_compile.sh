#!/usr/bin/env bash
# Compile the cupy_batched device code for sm_90 with nvcc (CI compile check).
#
# For each representative hyper-parameter set (kernels.cupy.compile_check.
# representative_hypers: lmax 6 and 10 GTO default, lmax 8 monomial with a
# radial-count list, lmax 0 with an int count) four generated translation units
# are compiled to cubins for sm_90:
#   <name>.cu          the pair kernel (pair_expansion.cuh + generated wb::Spec +
#                      pair_expansion_kernel.cu: wb_expand_f64, wb_expand_f32);
#   density_<name>.cu  the centre-density kernels (+ generated wb::DensitySpec +
#                      centre_density.cuh + centre_density_kernel.cu:
#                      wb_density_f64/f32, wb_combine_f64/f32; kernels.cupy.density);
#   gradients_<name>.cu values and gradients (pair_gradients.cuh + generated
#                      wb::GradSpec + pair_gradients_kernel.cu: wb_gradients_f64/f32;
#                      kernels.cupy.gradients);
#   backward_<name>.cu the centre density's backward pass (centre_density_backward.cuh
#                      + generated spec + centre_density_backward_kernel.cu;
#                      kernels.cupy.backward).
# (all written, with their host harnesses, by `python -m
# einsum_workbench.kernels.cupy.compile_check write-sources DIR`). ptxas'
# register and spill report is printed per kernel.
# The host harnesses (the same device code as plain C++) are syntax-checked
# with g++ -Werror.
#
# Exit status: 0 compiled (or SKIPPED because nvcc is absent: the message says
# so), 1 a compile failed (nvcc's output is printed), 2 usage/setup error.
# Environment: PYTHON (default .venv/bin/python, else python3), NVCC (default:
# nvcc on PATH, else /usr/local/cuda/bin/nvcc), CUDA_ARCH (default sm_90).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
ARCH="${CUDA_ARCH:-sm_90}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
    echo "check_cuda_compile: SKIPPED: nvcc not found (PATH or /usr/local/cuda/bin); the sm_90 compile of the cupy_batched pair, centre-density, gradient and backward kernels did not run"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m einsum_workbench.kernels.cupy.compile_check write-sources "$work" > /dev/null || {
    echo "check_cuda_compile: FAILED to generate the pair, centre-density, gradient and backward kernel sources" >&2; exit 2; }

echo "check_cuda_compile: $("$NVCC" --version | tail -1), arch $ARCH"
status=0
for source in "$work"/*.cu; do
    name="$(basename "$source" .cu)"
    log="$work/$name.log"
    if "$NVCC" -arch="$ARCH" --cubin -std=c++17 -Xptxas -v -Werror all-warnings \
            -o "$work/$name.cubin" "$source" > "$log" 2>&1; then
        # one line per kernel: registers and spill stores/loads from ptxas -v
        summary="$(grep -E "Compiling entry|registers|spill" "$log" \
            | sed -E 's/.*Compiling entry function .(wb_[a-z_]+_f[0-9]+). for .*/\1/; s/ptxas info *: //' \
            | paste -sd' ' - | sed -E 's/ (wb_[a-z_]+_f[0-9]+)/\n    \1/g')"
        echo "  OK   $name"
        echo "    $summary"
    else
        echo "  FAIL $name: nvcc -arch=$ARCH did not compile the kernel:" >&2
        cat "$log" >&2
        status=1
    fi
done
# the same header + spec as plain C++ (what the tests build with g++), warnings as errors
CXX_BIN="${CXX:-g++}"
if command -v "$CXX_BIN" > /dev/null; then
    host_status=OK
    for source in "$work"/*_host.cpp; do
        if ! "$CXX_BIN" -std=c++17 -Wall -Wextra -Werror -fsyntax-only "$source" 2> "$work/host.log"; then
            echo "  FAIL $(basename "$source"): $CXX_BIN did not compile the host harness:" >&2
            cat "$work/host.log" >&2
            status=1
            host_status=FAIL
        fi
    done
    echo "  host harness (plain C++, $CXX_BIN -Wall -Wextra -Werror): $host_status"
else
    echo "  host harness: SKIPPED ($CXX_BIN not found)"
fi
if [ "$status" -ne 0 ]; then
    echo "check_cuda_compile: FAILED" >&2
    exit 1
fi
echo "check_cuda_compile: all kernels compiled for $ARCH"
