// Fused expansion kernel: one thread per neighbour pair, every frame's pairs
// in one launch (or one launch per memory-bounded chunk).
//
// Inputs (device, C-contiguous): r_ij (n, 3), rotations (n, 3, 3), semiaxes
// (n, 3). Output: component-major, output o of pair p at out[o * out_stride + p]
// (out_stride = n for one chunk's buffer, or the whole batch's pair count when
// every chunk writes its columns of one device-resident block).
// The generated struct wb::Spec (one hyper-parameter set) is inserted where
// "wb_spec.cuh" is included.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"

template <typename T>
__device__ inline void expand_pairs(const T* __restrict__ r_ij, const T* __restrict__ rotations,
                                    const T* __restrict__ semiaxes, T* __restrict__ out,
                                    long long n_pairs, long long out_stride) {
    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pairs) return;
    wb::expand_pair<T, wb::Spec>(r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p, out + p, out_stride);
}

extern "C" __global__ void wb_expand_f64(const double* __restrict__ r_ij, const double* __restrict__ rotations,
                                         const double* __restrict__ semiaxes, double* __restrict__ out,
                                         long long n_pairs, long long out_stride) {
    expand_pairs<double>(r_ij, rotations, semiaxes, out, n_pairs, out_stride);
}

extern "C" __global__ void wb_expand_f32(const float* __restrict__ r_ij, const float* __restrict__ rotations,
                                         const float* __restrict__ semiaxes, float* __restrict__ out,
                                         long long n_pairs, long long out_stride) {
    expand_pairs<float>(r_ij, rotations, semiaxes, out, n_pairs, out_stride);
}
