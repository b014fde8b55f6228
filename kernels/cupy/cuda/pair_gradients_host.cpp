// Host harness of the gradient kernel: the device per-pair body
// (pair_expansion.cuh + generated wb::Spec and wb::GradSpec +
// pair_gradients.cuh) compiled by g++ as plain C++ and exported for ctypes,
// so that the arithmetic of wb_gradients_f64/f32 (pair_gradients_kernel.cu)
// is tested on a machine without a GPU. Same arguments and output layout; the
// loop over p replaces the thread index.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_grad_spec.cuh"
#include "pair_gradients.cuh"

template <typename T>
static void gradient_pairs_host(const T* r_ij, const T* rotations, const T* semiaxes, T* out,
                                long long n_pairs, long long out_stride, long long n_directions) {
    for (long long p = 0; p < n_pairs; ++p) {
        wb::expand_pair_gradients<T, wb::Spec, wb::GradSpec>(r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p,
                                                             out + p, out_stride, (int)n_directions);
    }
}

extern "C" {

int wb_host_gradients_num_outputs() { return wb::Spec::num_outputs; }

void wb_host_gradients_f64(const double* r_ij, const double* rotations, const double* semiaxes,
                           double* out, long long n_pairs, long long out_stride, long long n_directions) {
    gradient_pairs_host<double>(r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions);
}

void wb_host_gradients_f32(const float* r_ij, const float* rotations, const float* semiaxes,
                           float* out, long long n_pairs, long long out_stride, long long n_directions) {
    gradient_pairs_host<float>(r_ij, rotations, semiaxes, out, n_pairs, out_stride, n_directions);
}

}  // extern "C"
