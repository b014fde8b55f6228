// Per-segment body of the centre-density kernel (one thread = one segment).
//
// A segment is one output row of the centre density (one centre and neighbour
// species): the sum of the raw coefficients of its pairs. Pairs arrive sorted
// by segment, so a segment is a contiguous range [begin, end) of pairs.
//
// The coefficient of one pair is  c_o = scale_p * sum_k T[k, o] E_p[k]
// (pair_expansion.cuh + wb::Spec::contract), linear in the scaled moments
// scale_p E_p. So the segment's row is
//
//     rho_o = sum_p c_o(p) = sum_k T[k, o] (sum_p scale_p E_p[k]),
//
// one contraction of the summed scaled moments: per pair only the Gaussian
// (pair_expansion.cuh), the moment recurrence and num_moments multiply-adds
// into the accumulator (wb::DensitySpec::accumulate_moments, generated from
// the same recurrence as wb::Spec::moments, adding each moment as soon as it
// is computed so that only the last two degrees stay live: at lmax 6 float64
// this keeps the kernel within 255 registers without spills, where computing
// all moments first and adding them afterwards spilled); the sparse
// contraction (wb::Spec::contract, the same generated code as the pair
// kernel) runs once per segment and the row is written once. No atomics: the
// result does not depend on thread scheduling.
//
// Compiled, like pair_expansion.cuh, by NVRTC (kernels/cupy/density.py), by nvcc for
// sm_90 (tools/check_cuda_compile.sh) and by g++ as plain C++
// (centre_density_host.cpp, tests/kernels/cupy/test_density.py). Needs
// pair_expansion.cuh, the generated wb::Spec and wb::DensitySpec before it.
#ifndef WB_CENTRE_DENSITY_CUH
#define WB_CENTRE_DENSITY_CUH

#if defined(__CUDACC__)
#define WB_UNROLL _Pragma("unroll")
#else
#define WB_UNROLL
#endif

namespace wb {

// Sum over pairs [begin, end) of r_ij (n, 3), rotations (n, 3, 3), semiaxes
// (n, 3) of the raw coefficients; output o of the row goes to out[o * stride].
// An empty range writes zeros.
template <typename T, typename Spec, typename DensitySpec>
__host__ __device__ inline void segment_density(const T* r_ij, const T* rotations, const T* semiaxes,
                                                long long begin, long long end, T* out, long long stride) {
    static_assert(DensitySpec::num_moments == Spec::num_moments, "specs of different hyper-parameters");
    T acc[Spec::num_moments];
    WB_UNROLL
    for (int k = 0; k < Spec::num_moments; ++k) acc[k] = T(0);
    for (long long p = begin; p < end; ++p) {
        PairGaussian<T> g;
        body_frame_gaussian<T>(r_ij + 3 * p, rotations + 9 * p, semiaxes + 3 * p, T(Spec::inv_sigma2), g);
        DensitySpec::template accumulate_moments<T>(g.centre, g.cov, g.scale, acc);
    }
    Spec::template contract<T>(acc, T(1), out, stride);
}

// Row of one segment whose pairs were split into several runs (pieces): the
// sum of the pieces' rows, in run order (pair order). `row` is one output
// component of the pieces, `column[q]` the position in it of run q (the
// thread that computed it), runs [begin, end) belong to the segment.
// Deterministic: a fixed order, no atomics.
template <typename T>
__host__ __device__ inline T sum_pieces(const T* row, const long long* column, long long begin, long long end) {
    T total = T(0);
    for (long long q = begin; q < end; ++q) total += row[column[q]];
    return total;
}

}  // namespace wb

#endif  // WB_CENTRE_DENSITY_CUH
