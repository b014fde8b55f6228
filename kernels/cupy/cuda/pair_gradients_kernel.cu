// Gradient kernel: one thread per neighbour pair, every frame's pairs in one
// launch (or one launch per memory-bounded chunk); kernels/cupy/gradients.py.
//
// Inputs (device, C-contiguous): r_ij (n, 3), rotations (n, 3, 3), semiaxes
// (n, 3). Output: component-major, (1 + n_directions) blocks of num_outputs
// rows; row b * num_outputs + o of pair p at out[(b * num_outputs + o) *
// out_stride + p] (block 0 the values, block 1 + q direction q of
// wb::gradient_direction). The generated structs wb::Spec and wb::GradSpec
// (one hyper-parameter set) are inserted where their headers are included.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_grad_spec.cuh"
#include "pair_gradients.cuh"

template <typename T>
__device__ inline void gradient_pairs(const T* __restrict__ r_ij, const T* __restrict__ rotations,
                                      const T* __restrict__ semiaxes, T* __restrict__ out,
                                      long long n_pairs, long long out_stride, int n_directions) {
    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pairs) return;
    wb::expand_pair_gradients<T, wb::Spec, wb::GradSpec>(r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p,
                                                         out + p, out_stride, n_directions);
}

extern "C" __global__ void wb_gradients_f64(const double* __restrict__ r_ij, const double* __restrict__ rotations,
                                            const double* __restrict__ semiaxes, double* __restrict__ out,
                                            long long n_pairs, long long out_stride, int n_directions) {
    gradient_pairs<double>(r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions);
}

extern "C" __global__ void wb_gradients_f32(const float* __restrict__ r_ij, const float* __restrict__ rotations,
                                            const float* __restrict__ semiaxes, float* __restrict__ out,
                                            long long n_pairs, long long out_stride, int n_directions) {
    gradient_pairs<float>(r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions);
}
