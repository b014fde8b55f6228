// Per-pair body of the fused expansion kernel (one thread = one neighbour pair).
//
// Compiled three ways from the same text:
//   * by NVRTC through cupy.RawModule (kernels/cupy/pairs.py), for the GPU;
//   * by nvcc -arch=sm_90 in tools/check_cuda_compile.sh (CI compile check);
//   * by g++ as plain C++ (host_harness.cpp), so that the exact arithmetic
//     below runs on a CPU-only machine in tests/kernels/cupy/test_pairs.py.
// Outside CUDA compilers (__CUDACC__ undefined) __host__/__device__ expand to
// nothing.
//
// The hyper-parameter specific work (moment recurrence and sparse contraction
// against the solid-harmonic non-zeros) is generated straight-line code in a
// struct `wb::Spec` (see kernels/cupy/common.py, generate_spec_source), included after
// this header; this file holds what does not depend on the hyper-parameters.
//
// Mathematics: DESIGN.md section 3 and kernels/numpy_einsum.body_frame_gaussians.
#ifndef WB_PAIR_EXPANSION_CUH
#define WB_PAIR_EXPANSION_CUH

#if !defined(__CUDACC__)
#include <math.h>
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#endif

namespace wb {

__host__ __device__ inline double wb_sqrt(double x) { return sqrt(x); }
__host__ __device__ inline float wb_sqrt(float x) { return sqrtf(x); }
__host__ __device__ inline double wb_exp(double x) { return exp(x); }
__host__ __device__ inline float wb_exp(float x) { return expf(x); }

// Gaussian of (radial basis x neighbour density) for one pair.
template <typename T>
struct PairGaussian {
    T centre[3];     // a [angstrom]
    T cov[3][3];     // S = A'^(-1) [angstrom^2]
    T scale;         // exp(-k/2) / (l1 l2 l3 sqrt(det A'))
};

// Body-frame inversion: A' = R diag(d) R^T with d_k = 1/l_k^2 + inv_sigma2
// (inv_sigma2 = 0 for the monomial basis), so
//   S = R diag(1/d) R^T,  a = r - inv_sigma2 R (b / d),  b = R^T r,
//   k = inv_sigma2 sum_k b_k^2 (1/l_k^2) / d_k,  det A' = d1 d2 d3.
// No lab-frame determinant, no cofactor cancellation (needles and plates).
// r: (3,), rot: (3, 3) row-major body to lab, semiaxes: (3,).
template <typename T>
__host__ __device__ inline void body_frame_gaussian(const T* r, const T* rot, const T* semiaxes,
                                                    T inv_sigma2, PairGaussian<T>& g) {
    T inv_d[3], body[3], inv_l2[3];
    T det = T(1), k = T(0);
    for (int c = 0; c < 3; ++c) {
        inv_l2[c] = T(1) / (semiaxes[c] * semiaxes[c]);
        const T d = inv_l2[c] + inv_sigma2;
        inv_d[c] = T(1) / d;
        det *= d;
        body[c] = rot[0 * 3 + c] * r[0] + rot[1 * 3 + c] * r[1] + rot[2 * 3 + c] * r[2];
        k += body[c] * body[c] * inv_l2[c] * inv_d[c];
    }
    k *= inv_sigma2;
    for (int i = 0; i < 3; ++i) {
        T shift = T(0);
        for (int c = 0; c < 3; ++c) shift += rot[i * 3 + c] * body[c] * inv_d[c];
        g.centre[i] = r[i] - inv_sigma2 * shift;
        for (int j = 0; j < 3; ++j) {
            T s = T(0);
            for (int c = 0; c < 3; ++c) s += rot[i * 3 + c] * rot[j * 3 + c] * inv_d[c];
            g.cov[i][j] = s;
        }
    }
    g.scale = wb_exp(T(-0.5) * k) / (semiaxes[0] * semiaxes[1] * semiaxes[2] * wb_sqrt(det));
}

// Every coefficient of one pair. Output o (flat over l, m, n in that order)
// goes to out[o * stride]: with out = base + p and stride = number of pairs,
// consecutive threads write consecutive addresses (component-major layout).
template <typename T, typename Spec>
__host__ __device__ inline void expand_pair(const T* r, const T* rot, const T* semiaxes,
                                            T* out, long long stride) {
    PairGaussian<T> g;
    body_frame_gaussian<T>(r, rot, semiaxes, T(Spec::inv_sigma2), g);
    T moments[Spec::num_moments];
    Spec::template moments<T>(g.centre, g.cov, moments);
    Spec::template contract<T>(moments, g.scale, out, stride);
}

}  // namespace wb

#endif  // WB_PAIR_EXPANSION_CUH
