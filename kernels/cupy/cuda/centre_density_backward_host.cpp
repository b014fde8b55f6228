// Host harness of the centre density's backward kernel: the device per-pair
// body (pair_expansion.cuh + the generated wb::Spec and wb::BackwardSpec +
// centre_density_backward.cuh) compiled by g++ as plain C++ and exported for
// ctypes, so that the arithmetic of wb_backward_* (centre_density_backward_kernel.cu)
// is tested on a machine without a GPU. Same arguments and output layout; the
// loop over p replaces the thread index.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_backward_spec.cuh"
#include "centre_density_backward.cuh"

template <typename T, bool WithSemiaxes>
static void backward_pairs_host(const T* r_ij, const T* rotations, const T* semiaxes, const long long* row,
                                const T* moment_cotangent, T* out, long long n_pairs, long long out_stride) {
    for (long long p = 0; p < n_pairs; ++p) {
        wb::pair_backward<T, wb::Spec, wb::BackwardSpec, WithSemiaxes>(
            r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p, moment_cotangent + row[p] * wb::Spec::num_moments,
            out + p, out_stride);
    }
}

extern "C" {

int wb_host_backward_num_outputs() { return wb::Spec::num_outputs; }

void wb_host_backward_f64(const double* r_ij, const double* rotations, const double* semiaxes, const long long* row,
                          const double* moment_cotangent, double* out, long long n_pairs, long long out_stride) {
    backward_pairs_host<double, false>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

void wb_host_backward_f32(const float* r_ij, const float* rotations, const float* semiaxes, const long long* row,
                          const float* moment_cotangent, float* out, long long n_pairs, long long out_stride) {
    backward_pairs_host<float, false>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

void wb_host_backward_semiaxes_f64(const double* r_ij, const double* rotations, const double* semiaxes,
                                   const long long* row, const double* moment_cotangent, double* out,
                                   long long n_pairs, long long out_stride) {
    backward_pairs_host<double, true>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

void wb_host_backward_semiaxes_f32(const float* r_ij, const float* rotations, const float* semiaxes,
                                   const long long* row, const float* moment_cotangent, float* out,
                                   long long n_pairs, long long out_stride) {
    backward_pairs_host<float, true>(r_ij, rotations, semiaxes, row, moment_cotangent, out, n_pairs, out_stride);
}

}  // extern "C"
