// Host harness of the centre-density kernel: the device per-segment body
// (pair_expansion.cuh + the generated wb::Spec + centre_density.cuh) compiled
// by g++ as plain C++ and exported for ctypes, so that the arithmetic of
// wb_density_f64/f32 and wb_combine_f64/f32 (centre_density_kernel.cu) is
// tested on a machine without a GPU. Same arguments and output layout; loops
// replace the thread index.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_density_spec.cuh"
#include "centre_density.cuh"

template <typename T>
static void density_runs_host(const T* r_ij, const T* rotations, const T* semiaxes, const long long* run_start,
                              const long long* run_stop, T* out, long long n_runs, long long out_stride) {
    for (long long t = 0; t < n_runs; ++t) {
        wb::segment_density<T, wb::Spec, wb::DensitySpec>(r_ij, rotations, semiaxes, run_start[t], run_stop[t],
                                                          out + t, out_stride);
    }
}

template <typename T>
static void combine_runs_host(const T* pieces, const long long* column, const long long* first, T* out,
                              long long n_segments, long long piece_stride, long long out_stride) {
    for (long long o = 0; o < wb::Spec::num_outputs; ++o) {
        for (long long s = 0; s < n_segments; ++s) {
            out[o * out_stride + s] = wb::sum_pieces<T>(pieces + o * piece_stride, column, first[s], first[s + 1]);
        }
    }
}

extern "C" {

int wb_host_density_num_outputs() { return wb::Spec::num_outputs; }

void wb_host_density_f64(const double* r_ij, const double* rotations, const double* semiaxes,
                         const long long* run_start, const long long* run_stop, double* out,
                         long long n_runs, long long out_stride) {
    density_runs_host<double>(r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride);
}

void wb_host_density_f32(const float* r_ij, const float* rotations, const float* semiaxes,
                         const long long* run_start, const long long* run_stop, float* out,
                         long long n_runs, long long out_stride) {
    density_runs_host<float>(r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride);
}

void wb_host_combine_f64(const double* pieces, const long long* column, const long long* first, double* out,
                         long long n_segments, long long piece_stride, long long out_stride) {
    combine_runs_host<double>(pieces, column, first, out, n_segments, piece_stride, out_stride);
}

void wb_host_combine_f32(const float* pieces, const long long* column, const long long* first, float* out,
                         long long n_segments, long long piece_stride, long long out_stride) {
    combine_runs_host<float>(pieces, column, first, out, n_segments, piece_stride, out_stride);
}

}  // extern "C"
