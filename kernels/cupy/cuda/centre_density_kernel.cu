// Centre-density kernel: one thread per segment (a run of pairs sharing one
// output row), looping over that segment's pairs, accumulating on chip and
// writing its row once (centre_density.cuh). No atomics.
//
// Inputs (device, C-contiguous, pairs sorted by segment): r_ij (n, 3),
// rotations (n, 3, 3), semiaxes (n, 3); run_start, run_stop (n_runs,) int64:
// thread t sums pairs [run_start[t], run_stop[t]) (the host orders the runs,
// e.g. longest first, so that a warp holds runs of similar length).
// Output: component-major, output o of run t at out[o * out_stride + t]
// (consecutive threads write consecutive addresses).
// wb_combine_f64/f32 then sum the runs of each segment (a segment longer than
// the plan's run length is cut into several runs, so that small batches still
// fill the device): one thread per (output, segment), runs in pair order.
// The generated struct wb::Spec (one hyper-parameter set, shared with the pair
// kernel) is inserted where "wb_spec.cuh" is included, wb::DensitySpec
// (density.generate_density_spec_source) where "wb_density_spec.cuh" is.
#include "pair_expansion.cuh"
#include "wb_spec.cuh"
#include "wb_density_spec.cuh"
#include "centre_density.cuh"

template <typename T>
__device__ inline void density_runs(const T* __restrict__ r_ij, const T* __restrict__ rotations,
                                    const T* __restrict__ semiaxes, const long long* __restrict__ run_start,
                                    const long long* __restrict__ run_stop, T* __restrict__ out,
                                    long long n_runs, long long out_stride) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_runs) return;
    wb::segment_density<T, wb::Spec, wb::DensitySpec>(r_ij, rotations, semiaxes, run_start[t], run_stop[t],
                                                      out + t, out_stride);
}

// pieces: (num_outputs, piece_stride) component-major run rows; column[q]:
// column of run q (runs in pair order); first (n_segments + 1,): runs
// [first[s], first[s + 1]) make segment s. out: (num_outputs, out_stride).
template <typename T>
__device__ inline void combine_runs(const T* __restrict__ pieces, const long long* __restrict__ column,
                                    const long long* __restrict__ first, T* __restrict__ out,
                                    long long n_segments, long long piece_stride, long long out_stride) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_segments * wb::Spec::num_outputs) return;
    const long long o = i / n_segments;  // consecutive threads: consecutive segments of one output
    const long long s = i - o * n_segments;
    out[o * out_stride + s] = wb::sum_pieces<T>(pieces + o * piece_stride, column, first[s], first[s + 1]);
}

extern "C" __global__ void wb_density_f64(const double* __restrict__ r_ij, const double* __restrict__ rotations,
                                          const double* __restrict__ semiaxes,
                                          const long long* __restrict__ run_start,
                                          const long long* __restrict__ run_stop, double* __restrict__ out,
                                          long long n_runs, long long out_stride) {
    density_runs<double>(r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride);
}

extern "C" __global__ void wb_density_f32(const float* __restrict__ r_ij, const float* __restrict__ rotations,
                                          const float* __restrict__ semiaxes,
                                          const long long* __restrict__ run_start,
                                          const long long* __restrict__ run_stop, float* __restrict__ out,
                                          long long n_runs, long long out_stride) {
    density_runs<float>(r_ij, rotations, semiaxes, run_start, run_stop, out, n_runs, out_stride);
}

extern "C" __global__ void wb_combine_f64(const double* __restrict__ pieces, const long long* __restrict__ column,
                                          const long long* __restrict__ first, double* __restrict__ out,
                                          long long n_segments, long long piece_stride, long long out_stride) {
    combine_runs<double>(pieces, column, first, out, n_segments, piece_stride, out_stride);
}

extern "C" __global__ void wb_combine_f32(const float* __restrict__ pieces, const long long* __restrict__ column,
                                          const long long* __restrict__ first, float* __restrict__ out,
                                          long long n_segments, long long piece_stride, long long out_stride) {
    combine_runs<float>(pieces, column, first, out, n_segments, piece_stride, out_stride);
}
