// Backward kernel of the centre density: one thread per neighbour pair, every
// frame's pairs in one launch (or one launch per memory-bounded chunk);
// kernels/cupy/backward.py, per-pair body in centre_density_backward.cuh.
//
// Inputs (device, C-contiguous): r_ij (n, 3), rotations (n, 3, 3), semiaxes
// (n, 3); row (n,) int64, the row of pair p in moment_cotangent, a
// (rows, num_moments) table (the chunk's segments' gM = T'^T g, row-major:
// the pairs of one segment, adjacent when sorted, read one row).
// Output: component-major, 6 (wb_backward_*) or 9 (wb_backward_semiaxes_*)
// rows; component q of pair p at out[q * out_stride + p] (consecutive threads
// write consecutive addresses). The generated structs wb::Spec and
// wb::BackwardSpec (one hyper-parameter set) are inserted where their headers
// are included.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_backward_spec.cuh"
#include "centre_density_backward.cuh"

template <typename T, bool WithSemiaxes>
__device__ inline void backward_pairs(const T* __restrict__ r_ij, const T* __restrict__ rotations,
                                      const T* __restrict__ semiaxes, const long long* __restrict__ row,
                                      const T* __restrict__ moment_cotangent, T* __restrict__ out,
                                      long long n_pairs, long long out_stride) {
    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pairs) return;
    wb::pair_backward<T, wb::Spec, wb::BackwardSpec, WithSemiaxes>(
        r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p, moment_cotangent + row[p] * wb::Spec::num_moments,
        out + p, out_stride);
}

extern "C" __global__ void wb_backward_f64(const double* __restrict__ r_ij, const double* __restrict__ rotations,
                                           const double* __restrict__ semiaxes, const long long* __restrict__ row,
                                           const double* __restrict__ moment_cotangent, double* __restrict__ out,
                                           long long n_pairs, long long out_stride) {
    backward_pairs<double, false>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

extern "C" __global__ void wb_backward_f32(const float* __restrict__ r_ij, const float* __restrict__ rotations,
                                           const float* __restrict__ semiaxes, const long long* __restrict__ row,
                                           const float* __restrict__ moment_cotangent, float* __restrict__ out,
                                           long long n_pairs, long long out_stride) {
    backward_pairs<float, false>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

extern "C" __global__ void wb_backward_semiaxes_f64(const double* __restrict__ r_ij,
                                                    const double* __restrict__ rotations,
                                                    const double* __restrict__ semiaxes,
                                                    const long long* __restrict__ row,
                                                    const double* __restrict__ moment_cotangent,
                                                    double* __restrict__ out, long long n_pairs,
                                                    long long out_stride) {
    backward_pairs<double, true>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

extern "C" __global__ void wb_backward_semiaxes_f32(const float* __restrict__ r_ij,
                                                    const float* __restrict__ rotations,
                                                    const float* __restrict__ semiaxes,
                                                    const long long* __restrict__ row,
                                                    const float* __restrict__ moment_cotangent,
                                                    float* __restrict__ out, long long n_pairs,
                                                    long long out_stride) {
    backward_pairs<float, true>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}
