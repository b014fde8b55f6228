// Per-pair body of the centre density's backward pass (one thread = one
// neighbour pair): dL/dr_ij, dL/dtheta (and dL/dl_k) of a scalar L of the
// centre density, from the pair's own moment table and its segment's moment
// cotangent, nothing else per pair (kernels/cupy/backward.py).
//
// Compiled three ways from the same text, as pair_expansion.cuh: NVRTC through
// cupy.RawModule, nvcc -arch=sm_90 (tests/kernels/cupy/test_backward.py) and
// g++ as plain C++ (centre_density_backward_host.cpp; tests without a GPU).
// Included after pair_expansion.cuh (PairGaussian, body_frame_gaussian), the
// generated wb::Spec (inv_sigma2, num_moments) and the generated
// wb::BackwardSpec (project; backward.generate_backward_spec_source).
//
// Mathematics (DESIGN.md section 3, "Backward pass"). The pair's coefficients
// are c = T' . M with M[t] = s E[x^t] (normal law N(a, S), scale s), so with
// the segment's moment cotangent gM = T'^T g (computed once per segment on the
// host) L depends on the pair through <gM, M> only. BackwardSpec::project
// returns, divided by s,
//   value       = <gM, M>
//   mean[k]     = dL/da_k    = sum_t gM[t] t_k M[t - e_k]
//   rotation[a] = <gM, D_a M> (D_a: the generator (e_a x x) . grad on monomials,
//                 i.e. dM/dtheta_a when the whole pair, r and the ellipsoid,
//                 rotates about lab axis a)
//   covariance  = dL/dS_ij (i <= j), the lower moments of reference/gradients.py
// and the chain rule (pair_gradients.cuh's directions, contracted) gives
//   dL/dr_a     = -a_a / sigma^2 value + sum_k P_ka mean[k],  P = I - S / sigma^2
//   dL/dtheta_a = rotation[a] - (r x dL/dr)_a       (rotating the ellipsoid alone
//                 is rotating the pair minus moving r along e_a x r)
//   dL/dl_k     = dlog s value + da . mean + sum_{i<=j} dS_ij covariance_ij
//                 with dS = f u u^T, u = R e_k, f = 2 / (l_k^3 d_k^2),
//                 da = -dS r / sigma^2, dlog s = -1/l_k + 1 / (l_k^3 d_k) + r^T dS r / (2 sigma^4).
#ifndef WB_CENTRE_DENSITY_BACKWARD_CUH
#define WB_CENTRE_DENSITY_BACKWARD_CUH

#if defined(__CUDACC__)
#define WB_BACKWARD_UNROLL _Pragma("unroll")
#else
#define WB_BACKWARD_UNROLL
#endif

namespace wb {

// Output q of the pair goes to out[q * stride]: q = 0..2 dL/dr_ij, 3..5
// dL/dtheta about lab axis q - 3, and with WithSemiaxes 6..8 dL/dl_(q - 6).
// r: (3,), rot: (3, 3) row-major body to lab, semiaxes: (3,),
// gm: (Spec::num_moments,) the moment cotangent of the pair's segment.
template <typename T, typename Spec, typename BackwardSpec, bool WithSemiaxes>
__host__ __device__ inline void pair_backward(const T* r, const T* rot, const T* semiaxes, const T* gm,
                                              T* out, long long stride) {
    static_assert(BackwardSpec::num_moments == Spec::num_moments, "specs of different hyper-parameters");
    const T inv_sigma2 = T(Spec::inv_sigma2);
    PairGaussian<T> g;
    body_frame_gaussian<T>(r, rot, semiaxes, inv_sigma2, g);
    T value = T(0);
    T mean[3] = {T(0), T(0), T(0)};
    T rotation[3] = {T(0), T(0), T(0)};
    T covariance[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    BackwardSpec::template project<T, WithSemiaxes>(g.centre, g.cov, gm, value, mean, rotation, covariance);
    const T s = g.scale;
    value *= s;
    WB_BACKWARD_UNROLL
    for (int c = 0; c < 3; ++c) {
        mean[c] *= s;
        rotation[c] *= s;
    }
    T dr[3];
    WB_BACKWARD_UNROLL
    for (int c = 0; c < 3; ++c) {
        const T s_mean = g.cov[0][c] * mean[0] + g.cov[1][c] * mean[1] + g.cov[2][c] * mean[2];
        dr[c] = mean[c] - inv_sigma2 * (g.centre[c] * value + s_mean);
        out[c * stride] = dr[c];
    }
    out[3 * stride] = rotation[0] - (r[1] * dr[2] - r[2] * dr[1]);
    out[4 * stride] = rotation[1] - (r[2] * dr[0] - r[0] * dr[2]);
    out[5 * stride] = rotation[2] - (r[0] * dr[1] - r[1] * dr[0]);
    if constexpr (WithSemiaxes) {  // the false instantiation has no semi-axis code at all
        WB_BACKWARD_UNROLL
        for (int c = 0; c < 6; ++c) covariance[c] *= s;
        WB_BACKWARD_UNROLL
        for (int k = 0; k < 3; ++k) {
            const T u[3] = {rot[0 * 3 + k], rot[1 * 3 + k], rot[2 * 3 + k]};
            const T inv_l = T(1) / semiaxes[k];
            const T d = inv_l * inv_l + inv_sigma2;
            const T factor = T(2) * inv_l * inv_l * inv_l / (d * d);  // dS = factor u u^T
            const T ur = u[0] * r[0] + u[1] * r[1] + u[2] * r[2];
            const T dlog_scale = -inv_l + inv_l * inv_l * inv_l / d + T(0.5) * inv_sigma2 * inv_sigma2 * factor * ur * ur;
            const T u_mean = u[0] * mean[0] + u[1] * mean[1] + u[2] * mean[2];
            const T spread = u[0] * u[0] * covariance[0] + u[0] * u[1] * covariance[1] + u[0] * u[2] * covariance[2]
                             + u[1] * u[1] * covariance[3] + u[1] * u[2] * covariance[4] + u[2] * u[2] * covariance[5];
            out[(6 + k) * stride] = dlog_scale * value - inv_sigma2 * factor * ur * u_mean + factor * spread;
        }
    }
}

}  // namespace wb

#endif  // WB_CENTRE_DENSITY_BACKWARD_CUH
