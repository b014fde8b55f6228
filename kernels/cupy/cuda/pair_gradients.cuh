// Per-pair body of the gradient kernel (one thread = one neighbour pair):
// the raw coefficients and their derivatives along r_ij, along infinitesimal
// rotations of the neighbour about each lab axis and (optionally) along its
// semi-axes, all from one moment table.
//
// Compiled three ways from the same text, as pair_expansion.cuh: NVRTC through
// cupy.RawModule (kernels/cupy/gradients.py), nvcc -arch=sm_90 (compile check),
// g++ as plain C++ (pair_gradients_host.cpp; tests without a GPU). Included
// after pair_expansion.cuh (PairGaussian, body_frame_gaussian), the generated
// wb::Spec (moments, contract; common.generate_spec_source) and the
// generated wb::GradSpec (derivative; gradients.generate_grad_spec_source).
//
// Mathematics (reference/gradients.py): with the covariance S, centre a and
// scale s of body_frame_gaussian and E[t] the normal law's moments, a
// direction q gives scalars dlog s, da (3) and dS (3x3, symmetric); then
//   dE_q[t] = dlog s E[t] + sum_k da_k t_k E[t - e_k]
//             + sum_{k<=m} dS_km c_km(t) E[t - e_k - e_m]
// (c_kk = t_k (t_k - 1) / 2, c_km = t_k t_m) and d c = s sum_t T'[t] dE_q[t],
// the same sparse contraction as the values, generated degree by degree so
// that only one degree's dE_q is live beside the moments (GradSpec::derivative).
#ifndef WB_PAIR_GRADIENTS_CUH
#define WB_PAIR_GRADIENTS_CUH

namespace wb {

// Direction q of one pair: q = 0..2 along r_q, 3..5 rotation about lab axis
// q - 3 (R -> (I + theta [e]_x) R), 6..8 semi-axis q - 6. Unit vectors built
// from comparisons keep every array index static (no local memory on a GPU).
//   positions:    dS = 0, da = e - S e / sigma^2, dlog s = -a.e / sigma^2
//   orientations: dS = W S - S W = W S + (W S)^T with W v = e x v
//   semi-axis k:  dS = -(dd_k / d_k^2) u u^T, u = R e_k, dd_k = -2 / l_k^3,
//                 dlog s gains -1/l_k - dd_k / (2 d_k)
//   and for both: da = -dS r / sigma^2, dlog s += r^T dS r / (2 sigma^4)
template <typename T>
__host__ __device__ inline void gradient_direction(int q, const T* r, const T* rot, const T* semiaxes,
                                                   const PairGaussian<T>& g, T inv_sigma2,
                                                   T da[3], T dS[3][3], T& dlog_scale) {
    const int kind = q / 3;
    const int axis = q - 3 * kind;
    T e[3];
    for (int c = 0; c < 3; ++c) e[c] = (c == axis) ? T(1) : T(0);
    dlog_scale = T(0);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) dS[i][j] = T(0);
    if (kind == 1) {
        T ws[3][3];  // W S, column j = e x S[:, j]
        for (int j = 0; j < 3; ++j) {
            ws[0][j] = e[1] * g.cov[2][j] - e[2] * g.cov[1][j];
            ws[1][j] = e[2] * g.cov[0][j] - e[0] * g.cov[2][j];
            ws[2][j] = e[0] * g.cov[1][j] - e[1] * g.cov[0][j];
        }
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) dS[i][j] = ws[i][j] + ws[j][i];
    } else if (kind == 2) {
        T u[3];
        T length = T(0);
        for (int c = 0; c < 3; ++c) length += e[c] * semiaxes[c];
        for (int i = 0; i < 3; ++i) u[i] = rot[i * 3 + 0] * e[0] + rot[i * 3 + 1] * e[1] + rot[i * 3 + 2] * e[2];
        const T inv_l = T(1) / length;
        const T d = inv_l * inv_l + inv_sigma2;
        const T dd = T(-2) * inv_l * inv_l * inv_l;
        const T factor = -dd / (d * d);
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) dS[i][j] = factor * u[i] * u[j];
        dlog_scale = -inv_l - dd / (T(2) * d);
    }
    T rdsr = T(0);
    for (int i = 0; i < 3; ++i) {
        const T dsr = dS[i][0] * r[0] + dS[i][1] * r[1] + dS[i][2] * r[2];
        da[i] = -inv_sigma2 * dsr;
        rdsr += r[i] * dsr;
    }
    dlog_scale += T(0.5) * inv_sigma2 * inv_sigma2 * rdsr;
    if (kind == 0) {
        for (int i = 0; i < 3; ++i) {
            const T se = g.cov[i][0] * e[0] + g.cov[i][1] * e[1] + g.cov[i][2] * e[2];
            da[i] += e[i] - inv_sigma2 * se;
            dlog_scale -= inv_sigma2 * g.centre[i] * e[i];
        }
    }
}

// Values and derivatives of one pair. Output block b (0: values, 1 + q:
// direction q) and output o (flat over l, m, n, as expand_pair) go to
// out[(b * Spec::num_outputs + o) * stride]: with out = base + p and stride =
// number of pairs, consecutive threads write consecutive addresses.
// n_directions: 6 (positions, orientations) or 9 (and semi-axes).
template <typename T, typename Spec, typename GradSpec>
__host__ __device__ inline void expand_pair_gradients(const T* r, const T* rot, const T* semiaxes,
                                                      T* out, long long stride, int n_directions) {
    const T inv_sigma2 = T(Spec::inv_sigma2);
    PairGaussian<T> g;
    body_frame_gaussian<T>(r, rot, semiaxes, inv_sigma2, g);
    T moments[Spec::num_moments];
    Spec::template moments<T>(g.centre, g.cov, moments);
    Spec::template contract<T>(moments, g.scale, out, stride);
    const long long block = (long long)Spec::num_outputs * stride;
    // not unrolled: one copy of the derivative contraction serves every direction
#if defined(__CUDACC__)
#pragma unroll 1
#endif
    for (int q = 0; q < n_directions; ++q) {
        T da[3], dS[3][3], dlog_scale;
        gradient_direction<T>(q, r, rot, semiaxes, g, inv_sigma2, da, dS, dlog_scale);
        GradSpec::template derivative<T>(moments, dlog_scale, da, dS, g.scale, out + (q + 1) * block, stride);
    }
}

}  // namespace wb

#endif  // WB_PAIR_GRADIENTS_CUH
