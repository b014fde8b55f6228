// Host harness: the device per-pair body (pair_expansion.cuh + the generated
// wb::Spec) compiled by g++ as plain C++ and exported for ctypes, so that the
// arithmetic of the CUDA kernel is tested on a machine without a GPU.
// Same arguments and output layout as wb_expand_f64/f32 in
// pair_expansion_kernel.cu; the loop over p replaces the thread index.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"

template <typename T>
static void expand_pairs_host(const T* r_ij, const T* rotations, const T* semiaxes, T* out,
                              long long n_pairs, long long out_stride) {
    for (long long p = 0; p < n_pairs; ++p) {
        wb::expand_pair<T, wb::Spec>(r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p, out + p, out_stride);
    }
}

extern "C" {

int wb_host_num_outputs() { return wb::Spec::num_outputs; }

void wb_host_expand_f64(const double* r_ij, const double* rotations, const double* semiaxes,
                        double* out, long long n_pairs, long long out_stride) {
    expand_pairs_host<double>(r_ij, rotations, semiaxes, out, n_pairs, out_stride);
}

void wb_host_expand_f32(const float* r_ij, const float* rotations, const float* semiaxes,
                        float* out, long long n_pairs, long long out_stride) {
    expand_pairs_host<float>(r_ij, rotations, semiaxes, out, n_pairs, out_stride);
}

}  // extern "C"
