// test_kernels.cpp: runs every kernel family of cuda/*.cu under the CPU emulation (cuda_emu.h) against
// plain double-precision references, with the launch shapes documented in cuda/KERNELS.md.
// build.rs compiles it into the crate's emulation library; tests/emu.rs runs it (`fasp_emu_selftest`).
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <tuple>

#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16;
typedef long long i64;
using emu::launch;

// ---- kernel declarations (must match cuda/*.cu exactly) --------------------------------------------------
extern "C" {
void fasp_score_columns_f32(const float*, int, int, const float*, float*);
void fasp_score_columns_bf16(const bf16*, int, int, const float*, float*);
void fasp_score_columns_partial_f32(const float*, int, int, int, double*);
void fasp_score_columns_finish(const double*, int, int, const float*, float*);
void fasp_score_units_f32(const float*, int, int, int, float*);
void fasp_topk_select(const float*, int, int, int*, unsigned char*, int*);
void fasp_topk_rank_mask(const float*, int, int, unsigned char*);
void fasp_topk_compact(const float*, int, int, const unsigned char*, int*, int*);
void fasp_gather_rows_f32(const float*, int, int, const int*, int, float*);
void fasp_gather_cols_f32(const float*, int, int, const int*, int, float*);
void fasp_gather_cols_bf16(const bf16*, int, int, const int*, int, bf16*);
void fasp_gather_submatrix_f32(const float*, int, const int*, int, const int*, int, float*);
void fasp_scatter_cols_f32(const float*, int, int, const int*, float*, int);
void fasp_scatter_rows_f32(const float*, int, int, const int*, float*, int);
void fasp_cholesky_diag_block(float*, int, int, long long, int, int*);
void fasp_cholesky_panel_trsm(float*, int, int, long long, int, int*);
void fasp_cholesky_trailing_syrk(float*, int, int, long long, int, int*);
void fasp_cholesky_add_diag(float*, int, int, long long, float);
void fasp_cholesky_add_diag_scaled(float*, int, int, long long, float, const float*);
void fasp_cholesky_diag_mean(const float*, int, int, long long, float*);
void fasp_cholesky_solve_lower(const float*, int, int, long long, float*, int, int, long long);
void fasp_cholesky_solve_upper(const float*, int, int, long long, float*, int, int, long long);
void fasp_layernorm_f32(const float*, const float*, const float*, float*, int, int, float);
void fasp_rmsnorm_f32(const float*, const float*, float*, int, int, float);
void fasp_rmsnorm_plus_one_f32(const float*, const float*, float*, int, int, float);
void fasp_rope_f32(float*, int, int, int, int, const int*, int, float, const float*);
void fasp_attention_softmax_causal_f32(float*, int, int, float);
void fasp_attention_softmax_window_f32(float*, int, int, float, int);
void fasp_attention_split_heads_f32(const float*, int, int, int, int, int, int, int, float*);
void fasp_attention_merge_heads_f32(const float*, int, int, int, int, float*);
void fasp_relu_f32(float*, long long);
void fasp_silu_mul_f32(const float*, const float*, float*, long long);
void fasp_gelu_tanh_mul_f32(const float*, const float*, float*, long long);
void fasp_add_f32(const float*, const float*, float*, long long);
void fasp_add_bias_f32(float*, const float*, int, int);
void fasp_convert_f32_to_bf16(const float*, bf16*, long long);
void fasp_convert_bf16_to_f32(const bf16*, float*, long long);
void fasp_check_finite_f32(const float*, long long, int*);
void fasp_check_finite_bf16(const bf16*, long long, int*);
void fasp_embed_gather_f32(const int*, int, const float*, int, int, float*);
void fasp_embed_gather_bf16(const int*, int, const bf16*, int, int, float*);
void fasp_embed_add_positions_f32(float*, int, int, const float*, int, const int*, int, int);
void fasp_stats_diag_f32(const float*, int, int, float*);
void fasp_stats_symmetrize_f32(float*, int, int, int);
void fasp_stats_accumulate_f64(double*, const float*, long long);
void fasp_stats_f64_to_f32(const double*, float*, long long);
void fasp_stats_sumsq_partial_f32(const float*, const float*, long long, double*);
void fasp_stats_sum_f64(const double*, int, double*);
}

// ---- tiny test framework ----------------------------------------------------------------------------------
static int g_passed = 0, g_failed = 0;
static std::mt19937_64 rng(12345);

static std::vector<float> randn(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// |got - want| <= atol + rtol*|want|, NaN == NaN; prints the first few mismatches.
template <class G, class W>
static bool close(const char* what, const G& got, const W& want, double atol, double rtol) {
    if (got.size() != want.size()) {
        printf("  %s: size %zu vs %zu\n", what, got.size(), want.size());
        return false;
    }
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = got[i], w = want[i];
        const bool ok = (std::isnan(g) && std::isnan(w)) || (g == w) || std::fabs(g - w) <= atol + rtol * std::fabs(w);
        if (!ok && ++bad <= 5) printf("  %s[%zu]: got %.9g want %.9g\n", what, i, g, w);
    }
    if (bad) printf("  %s: %d mismatches of %zu\n", what, bad, got.size());
    return bad == 0;
}

static void run(const char* name, const std::function<bool()>& f) {
    const bool ok = f();
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    (ok ? g_passed : g_failed)++;
}

static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

// ---- reference helpers ------------------------------------------------------------------------------------
static std::vector<int> topk_ref(const std::vector<float>& s, int k) {
    std::vector<int> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[a] > s[b]; });
    idx.resize(k);
    std::sort(idx.begin(), idx.end());
    return idx;
}

// Lower Cholesky in double, row-major n x n.
static std::vector<double> chol_ref(const std::vector<double>& A, int n) {
    std::vector<double> L(A.size(), 0.0);
    for (int j = 0; j < n; ++j) {
        double d = A[j * n + j];
        for (int p = 0; p < j; ++p) d -= L[j * n + p] * L[j * n + p];
        L[j * n + j] = std::sqrt(d);
        for (int i = j + 1; i < n; ++i) {
            double s = A[i * n + j];
            for (int p = 0; p < j; ++p) s -= L[i * n + p] * L[j * n + p];
            L[i * n + j] = s / L[j * n + j];
        }
    }
    return L;
}

// Host driver of the blocked factorisation (the sequence in KERNELS.md).
static void chol_factor(float* A, int n, int lda, long long stride, int batch, int* info) {
    for (int k = 0; k < n; k += 32) {
        launch(fasp_cholesky_diag_block, dim3(1, 1, batch), dim3(32, 32), A, n, lda, stride, k, info);
        if (k + 32 < n) {
            const int m = n - k - 32;
            launch(fasp_cholesky_panel_trsm, dim3(cdiv(m, 32), 1, batch), dim3(32, 32), A, n, lda, stride, k, info);
            const long long T = cdiv(m, 64);
            launch(fasp_cholesky_trailing_syrk, dim3((unsigned)(T * (T + 1) / 2), 1, batch), dim3(256), A, n, lda,
                   stride, k, info);
        }
    }
}

// ---- tests ------------------------------------------------------------------------------------------------
static bool test_score() {
    const int rows = 37, cols = 300;
    auto W = randn((size_t)rows * cols);
    auto h = randn(cols);
    h[3] = -1.0f;  // negative diagonal (rounding) clamps to 0
    std::vector<float> want(cols);
    for (int j = 0; j < cols; ++j) {
        double s = 0;
        for (int i = 0; i < rows; ++i) s += std::fabs((double)W[i * cols + j]);
        want[j] = (float)(std::sqrt(std::max((double)h[j], 0.0)) * s);
    }
    std::vector<float> got(cols, -1.0f), got2(cols, -1.0f), got3(cols, -1.0f);
    launch(fasp_score_columns_f32, dim3(cdiv(cols, 256)), dim3(256), W.data(), rows, cols, h.data(), got.data());
    const int rps = 10, nsplit = cdiv(rows, rps);
    std::vector<double> partial((size_t)nsplit * cols);
    launch(fasp_score_columns_partial_f32, dim3(cdiv(cols, 256), nsplit), dim3(256), W.data(), rows, cols, rps,
           partial.data());
    launch(fasp_score_columns_finish, dim3(cdiv(cols, 256)), dim3(256), partial.data(), nsplit, cols, h.data(),
           got2.data());
    std::vector<bf16> Wb(W.size());
    std::vector<float> wantb(cols);
    for (size_t i = 0; i < W.size(); ++i) Wb[i] = __float2bfloat16_rn(W[i]);
    for (int j = 0; j < cols; ++j) {
        double s = 0;
        for (int i = 0; i < rows; ++i) s += std::fabs((double)__bfloat162float(Wb[i * cols + j]));
        wantb[j] = (float)(std::sqrt(std::max((double)h[j], 0.0)) * s);
    }
    launch(fasp_score_columns_bf16, dim3(1), dim3(256), Wb.data(), rows, cols, h.data(), got3.data());
    // GQA units: kv_heads 3, head_dim 4, group 2 -> 24 columns
    const int kvh = 3, hd = 4, G = 2;
    auto cs = randn(kvh * G * hd);
    std::vector<float> uw(kvh * hd), ug(kvh * hd);
    for (int g = 0; g < kvh; ++g)
        for (int d = 0; d < hd; ++d) {
            double s = 0;
            for (int t = 0; t < G; ++t) s += cs[(g * G + t) * hd + d];
            uw[g * hd + d] = (float)s;
        }
    launch(fasp_score_units_f32, dim3(1), dim3(256), cs.data(), kvh, hd, G, ug.data());
    return close("colscore", got, want, 0, 1e-6) && close("colscore split", got2, want, 0, 1e-6) &&
           close("colscore bf16", got3, wantb, 0, 1e-6) && close("units", ug, uw, 0, 1e-6);
}

static bool test_topk() {
    bool ok = true;
    for (int n : {1, 5, 1000, 3000}) {
        std::vector<float> s(n);
        std::uniform_int_distribution<int> q(-20, 20);
        for (auto& x : s) x = q(rng) * 0.25f;  // many ties
        for (int i = 0; i < n; i += 7) s[i] = (i % 2) ? 0.0f : -0.0f;
        for (int k : {0, 1, n / 3, n - 1, n}) {
            if (k < 0) continue;
            auto want = topk_ref(s, k);
            std::vector<unsigned char> mask(n, 9), wantmask(n, 0), mask2(n, 9);
            for (int i : want) wantmask[i] = 1;
            std::vector<int> kept(std::max(k, 1), -7), kept2(std::max(k, 1), -7);
            int status = -1, status2 = -1;
            launch(fasp_topk_select, dim3(1), dim3(1024), s.data(), n, k, kept.data(), mask.data(), &status);
            launch(fasp_topk_rank_mask, dim3(cdiv(n, 256)), dim3(256), s.data(), n, k, mask2.data());
            launch(fasp_topk_compact, dim3(1), dim3(1024), s.data(), n, k, (const unsigned char*)mask2.data(),
                   kept2.data(), &status2);
            kept.resize(k);
            kept2.resize(k);
            const bool good = status == 0 && status2 == 0 && kept == want && kept2 == want && mask == wantmask &&
                              mask2 == wantmask;
            if (!good) printf("  topk n=%d k=%d: status %d/%d\n", n, k, status, status2);
            ok &= good;
        }
    }
    std::vector<float> s = randn(100);
    s[50] = NAN;
    std::vector<int> kept(10);
    std::vector<unsigned char> mask(100);
    int st_nan = -1, st_badk = -1, st_nan2 = -1;
    launch(fasp_topk_select, dim3(1), dim3(1024), s.data(), 100, 10, kept.data(), mask.data(), &st_nan);
    launch(fasp_topk_select, dim3(1), dim3(1024), s.data(), 100, 101, kept.data(), mask.data(), &st_badk);
    launch(fasp_topk_compact, dim3(1), dim3(1024), s.data(), 100, 10, (const unsigned char*)mask.data(),
           kept.data(), &st_nan2);
    if (st_nan != 1 || st_badk != 2 || st_nan2 != 1) {
        printf("  status: NaN %d, k > n %d, compact NaN %d (want 1, 2, 1)\n", st_nan, st_badk, st_nan2);
        ok = false;
    }
    return ok;
}

static bool test_compact() {
    const int rows = 13, cols = 70;
    auto src = randn((size_t)rows * cols);
    std::vector<int> ridx = {12, 0, 5, 5, 7}, cidx = {1, 3, 4, 9, 20, 69, 0};
    std::vector<float> g1(ridx.size() * cols), w1(g1.size());
    for (size_t r = 0; r < ridx.size(); ++r)
        for (int c = 0; c < cols; ++c) w1[r * cols + c] = src[ridx[r] * cols + c];
    launch(fasp_gather_rows_f32, dim3(1, 2), dim3(256), src.data(), rows, cols, ridx.data(), (int)ridx.size(),
           g1.data());
    std::vector<float> g2(rows * cidx.size()), w2(g2.size());
    for (int r = 0; r < rows; ++r)
        for (size_t t = 0; t < cidx.size(); ++t) w2[r * cidx.size() + t] = src[r * cols + cidx[t]];
    launch(fasp_gather_cols_f32, dim3(1, 4), dim3(256), src.data(), rows, cols, cidx.data(), (int)cidx.size(),
           g2.data());
    std::vector<bf16> sb(src.size()), gb(g2.size());
    for (size_t i = 0; i < src.size(); ++i) sb[i] = __float2bfloat16_rn(src[i]);
    launch(fasp_gather_cols_bf16, dim3(1, 4), dim3(256), sb.data(), rows, cols, cidx.data(), (int)cidx.size(),
           gb.data());
    std::vector<float> gbf(gb.size()), wbf(gb.size());
    for (size_t i = 0; i < gb.size(); ++i) {
        gbf[i] = __bfloat162float(gb[i]);
        wbf[i] = __bfloat162float(__float2bfloat16_rn(w2[i]));
    }
    const int n = 40;
    auto H = randn(n * n);
    std::vector<int> hr = {3, 39, 0}, hc = {0, 1, 2, 38, 39};
    std::vector<float> g3(hr.size() * hc.size()), w3(g3.size());
    for (size_t a = 0; a < hr.size(); ++a)
        for (size_t b = 0; b < hc.size(); ++b) w3[a * hc.size() + b] = H[hr[a] * n + hc[b]];
    launch(fasp_gather_submatrix_f32, dim3(1, 3), dim3(256), H.data(), n, hr.data(), (int)hr.size(), hc.data(),
           (int)hc.size(), g3.data());
    // scatter cols: [rows][nidx] into zeroed [rows][cols]
    std::vector<int> sidx = {2, 5, 6, 60};
    auto s4 = randn(rows * sidx.size());
    std::vector<float> g4((size_t)rows * cols, 0.0f), w4(g4.size(), 0.0f);
    for (int r = 0; r < rows; ++r)
        for (size_t t = 0; t < sidx.size(); ++t) w4[r * cols + sidx[t]] = s4[r * sidx.size() + t];
    launch(fasp_scatter_cols_f32, dim3(1, 5), dim3(256), s4.data(), rows, (int)sidx.size(), sidx.data(), g4.data(),
           cols);
    std::vector<int> rsidx = {0, 4, 11};
    auto s5 = randn(rsidx.size() * cols);
    std::vector<float> g5((size_t)rows * cols, 0.0f), w5(g5.size(), 0.0f);
    for (size_t r = 0; r < rsidx.size(); ++r)
        for (int c = 0; c < cols; ++c) w5[rsidx[r] * cols + c] = s5[r * cols + c];
    launch(fasp_scatter_rows_f32, dim3(1, 2), dim3(256), s5.data(), (int)rsidx.size(), cols, rsidx.data(), g5.data(),
           rows);
    // out-of-range index -> NaN
    std::vector<int> bad = {0, 13};
    std::vector<float> g6(2 * cols);
    launch(fasp_gather_rows_f32, dim3(1, 1), dim3(256), src.data(), rows, cols, bad.data(), 2, g6.data());
    const bool nan_ok = !std::isnan(g6[0]) && std::isnan(g6[cols]) && std::isnan(g6[2 * cols - 1]);
    if (!nan_ok) printf("  out-of-range gather did not give NaN\n");
    return close("gather_rows", g1, w1, 0, 0) && close("gather_cols", g2, w2, 0, 0) &&
           close("gather_cols_bf16", gbf, wbf, 0, 0) && close("submatrix", g3, w3, 0, 0) &&
           close("scatter_cols", g4, w4, 0, 0) && close("scatter_rows", g5, w5, 0, 0) && nan_ok;
}

static bool test_cholesky() {
    bool ok = true;
    for (int n : {1, 31, 32, 33, 70, 100, 130}) {
        const int batch = 2, lda = n + 3;
        const long long stride = (long long)lda * n + 5;
        std::vector<float> A(stride * batch, 777.0f);
        std::vector<std::vector<double>> Ad(batch);
        for (int b = 0; b < batch; ++b) {
            // A = X^T X / m + 0.1 I  (SPD, moderately conditioned)
            const int m = n + 10;
            auto X = randn((size_t)m * n);
            Ad[b].assign((size_t)n * n, 0.0);
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < n; ++j) {
                    double s = 0;
                    for (int t = 0; t < m; ++t) s += (double)X[t * n + i] * X[t * n + j];
                    Ad[b][i * n + j] = s / m;
                }
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < n; ++j) A[b * stride + (long long)i * lda + j] = (float)Ad[b][i * n + j];
        }
        // diag mean + add_diag_scaled(damp=0.1) and add_diag(0.05)
        std::vector<float> mean(batch, -1.0f);
        launch(fasp_cholesky_diag_mean, dim3(1, 1, batch), dim3(256), A.data(), n, lda, stride, mean.data());
        for (int b = 0; b < batch; ++b) {
            double s = 0;
            for (int i = 0; i < n; ++i) s += (float)Ad[b][i * n + i];
            ok &= close("diag_mean", std::vector<float>{mean[b]}, std::vector<double>{s / n}, 0, 1e-6);
        }
        launch(fasp_cholesky_add_diag_scaled, dim3(cdiv(n, 256), 1, batch), dim3(256), A.data(), n, lda, stride,
               0.1f, (const float*)mean.data());
        launch(fasp_cholesky_add_diag, dim3(cdiv(n, 256), 1, batch), dim3(256), A.data(), n, lda, stride, 0.05f);
        for (int b = 0; b < batch; ++b)
            for (int i = 0; i < n; ++i) Ad[b][i * n + i] = (double)A[b * stride + (long long)i * lda + i];
        const std::vector<float> A0 = A;
        std::vector<int> info(batch, 0);
        chol_factor(A.data(), n, lda, stride, batch, info.data());
        for (int b = 0; b < batch; ++b) {
            if (info[b] != 0) {
                printf("  n=%d b=%d info=%d\n", n, b, info[b]);
                ok = false;
                continue;
            }
            auto Lr = chol_ref(Ad[b], n);
            std::vector<float> gotL, upper, upper0;
            std::vector<double> wantL;
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < n; ++j) {
                    const float v = A[b * stride + (long long)i * lda + j];
                    if (j <= i) {
                        gotL.push_back(v);
                        wantL.push_back(Lr[i * n + j]);
                    } else {
                        upper.push_back(v);
                        upper0.push_back(A0[b * stride + (long long)i * lda + j]);
                    }
                }
            ok &= close("L", gotL, wantL, 1e-4, 1e-3);
            ok &= close("upper untouched", upper, upper0, 0, 0);
            // padding columns (j >= n) and the gap between matrices untouched
            for (long long e = 0; e < stride; ++e)
                if ((e >= (long long)n * lda || e % lda >= n) && A[b * stride + e] != 777.0f) {
                    printf("  padding written at %lld\n", e);
                    ok = false;
                    break;
                }
            // Solves: rows of B are RHS; x = A^-1 b.
            const int nrhs = 45, ldb = n + 2;
            auto Bv = randn((size_t)nrhs * ldb);
            std::vector<float> Bg = Bv;
            launch(fasp_cholesky_solve_lower, dim3(cdiv(nrhs, 32), 1, 1), dim3(256), A.data() + b * stride, n, lda,
                   0LL, Bg.data(), nrhs, ldb, 0LL);
            // check forward: L z = b
            std::vector<float> gz;
            std::vector<double> wz;
            for (int r = 0; r < nrhs; ++r) {
                std::vector<double> z(n);
                for (int i = 0; i < n; ++i) {
                    double s = Bv[r * ldb + i];
                    for (int p = 0; p < i; ++p) s -= Lr[i * n + p] * z[p];
                    z[i] = s / Lr[i * n + i];
                    gz.push_back(Bg[r * ldb + i]);
                    wz.push_back(z[i]);
                }
            }
            ok &= close("solve_lower", gz, wz, 1e-3, 1e-3);
            launch(fasp_cholesky_solve_upper, dim3(cdiv(nrhs, 32), 1, 1), dim3(256), A.data() + b * stride, n, lda,
                   0LL, Bg.data(), nrhs, ldb, 0LL);
            // residual: A x ≈ b
            std::vector<float> ax;
            std::vector<float> bb;
            for (int r = 0; r < nrhs; ++r)
                for (int i = 0; i < n; ++i) {
                    double s = 0;
                    for (int j = 0; j < n; ++j) s += Ad[b][i * n + j] * Bg[r * ldb + j];
                    ax.push_back((float)s);
                    bb.push_back(Bv[r * ldb + i]);
                }
            ok &= close("A x = b", ax, bb, 2e-3, 2e-3);
            // padding columns of B untouched
            for (int r = 0; r < nrhs; ++r)
                for (int i = n; i < ldb; ++i)
                    if (Bg[r * ldb + i] != Bv[r * ldb + i]) {
                        printf("  B padding written\n");
                        ok = false;
                    }
        }
    }
    // Non-SPD: info = first failing pivot + 1; the other batch member unaffected.
    {
        const int n = 50, batch = 2;
        const long long stride = (long long)n * n;
        std::vector<float> A(stride * batch, 0.0f);
        for (int b = 0; b < batch; ++b)
            for (int i = 0; i < n; ++i) A[b * stride + i * n + i] = 1.0f + i;
        A[0 * stride + 40 * n + 40] = -1.0f;  // batch 0 fails at pivot 40
        std::vector<int> info(batch, 0);
        chol_factor(A.data(), n, n, stride, batch, info.data());
        if (info[0] != 41 || info[1] != 0) {
            printf("  info = %d %d, want 41 0\n", info[0], info[1]);
            ok = false;
        }
        A.assign(stride, 0.0f);
        for (int i = 0; i < n; ++i) A[i * n + i] = 2.0f;
        A[7 * n + 3] = NAN;
        info.assign(1, 0);
        chol_factor(A.data(), n, n, stride, 1, info.data());
        if (info[0] == 0) {
            printf("  NaN input not flagged\n");
            ok = false;
        }
    }
    return ok;
}

static bool test_norms() {
    const int rows = 5, d = 300;
    auto x = randn(rows * d, 3.0f);
    for (auto& v : x) v += 1.5f;
    auto g = randn(d), be = randn(d), w = randn(d);
    std::vector<float> want(rows * d), wantr(rows * d);
    for (int r = 0; r < rows; ++r) {
        double mu = 0, var = 0, ms = 0;
        for (int i = 0; i < d; ++i) mu += x[r * d + i];
        mu /= d;
        for (int i = 0; i < d; ++i) var += (x[r * d + i] - mu) * (x[r * d + i] - mu), ms += (double)x[r * d + i] * x[r * d + i];
        var /= d;
        ms /= d;
        for (int i = 0; i < d; ++i) {
            want[r * d + i] = (float)((x[r * d + i] - mu) / std::sqrt(var + 1e-5) * g[i] + be[i]);
            wantr[r * d + i] = (float)(x[r * d + i] / std::sqrt(ms + 1e-6) * w[i]);
        }
    }
    std::vector<float> y(rows * d), y2 = x, yr(rows * d);
    launch(fasp_layernorm_f32, dim3(3), dim3(256), x.data(), g.data(), be.data(), y.data(), rows, d, 1e-5f);
    launch(fasp_layernorm_f32, dim3(rows), dim3(64), y2.data(), g.data(), be.data(), y2.data(), rows, d, 1e-5f);
    launch(fasp_rmsnorm_f32, dim3(2), dim3(128), x.data(), w.data(), yr.data(), rows, d, 1e-6f);
    std::vector<float> yn(rows * d), wantn(rows * d);
    launch(fasp_rmsnorm_f32, dim3(2), dim3(128), x.data(), (const float*)nullptr, yn.data(), rows, d, 1e-6f);
    for (int i = 0; i < rows * d; ++i) wantn[i] = w[i % d] != 0 ? wantr[i] / w[i % d] : yn[i];
    // (1+w) RMSNorm (Gemma), in place over rows of 20 (the per-head q/k norms' use)
    const int hrows = rows * d / 20;
    std::vector<float> yp = x, wantp(rows * d);
    for (int r = 0; r < hrows; ++r) {
        double ms = 0;
        for (int i = 0; i < 20; ++i) ms += (double)x[r * 20 + i] * x[r * 20 + i];
        ms /= 20;
        for (int i = 0; i < 20; ++i) wantp[r * 20 + i] = (float)(x[r * 20 + i] / std::sqrt(ms + 1e-6) * (1.0 + w[i]));
    }
    launch(fasp_rmsnorm_plus_one_f32, dim3(7), dim3(32), yp.data(), w.data(), yp.data(), hrows, 20, 1e-6f);
    return close("layernorm", y, want, 1e-5, 1e-4) && close("layernorm in place", y2, want, 1e-5, 1e-4) &&
           close("rmsnorm", yr, wantr, 1e-5, 1e-4) && close("rmsnorm no weight", yn, wantn, 1e-4, 1e-3) &&
           close("rmsnorm (1+w) in place", yp, wantp, 1e-5, 1e-4);
}

static bool test_rope() {
    const int ntok = 12, heads = 3, hd = 8, ld = heads * hd + 5, seqlen = 5;
    const float theta = 10000.0f;
    auto x = randn((size_t)ntok * ld);
    std::vector<float> got = x, want = x, got2 = x;
    for (int t = 0; t < ntok; ++t)
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < hd / 2; ++i) {
                const int pos = t % seqlen;
                const double f = 1.0 / std::pow((double)theta, (2.0 * i) / hd);
                const double a = x[t * ld + h * hd + i], b = x[t * ld + h * hd + i + hd / 2];
                want[t * ld + h * hd + i] = (float)(a * std::cos(pos * f) - b * std::sin(pos * f));
                want[t * ld + h * hd + i + hd / 2] = (float)(b * std::cos(pos * f) + a * std::sin(pos * f));
            }
    launch(fasp_rope_f32, dim3(1), dim3(256), got.data(), ntok, heads, hd, ld, (const int*)nullptr, seqlen, theta,
           (const float*)nullptr);
    std::vector<int> pos(ntok);
    for (int t = 0; t < ntok; ++t) pos[t] = t % seqlen;
    std::vector<float> invf(hd / 2);
    for (int i = 0; i < hd / 2; ++i) invf[i] = (float)(1.0 / std::pow((double)theta, (2.0 * i) / hd));
    launch(fasp_rope_f32, dim3(1), dim3(256), got2.data(), ntok, heads, hd, ld, (const int*)pos.data(), seqlen, theta,
           (const float*)invf.data());
    return close("rope", got, want, 1e-5, 1e-5) && close("rope table", got2, want, 1e-5, 1e-5);
}

static bool test_attention() {
    const int nmat = 3, L = 50;
    const float scale = 0.3f;
    auto S = randn((size_t)nmat * L * L, 2.0f);
    std::vector<float> want(S.size());
    for (int m = 0; m < nmat; ++m)
        for (int i = 0; i < L; ++i) {
            const float* row = &S[((size_t)m * L + i) * L];
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; ++j) mx = std::max(mx, (double)row[j] * scale);
            for (int j = 0; j <= i; ++j) sum += std::exp(row[j] * scale - mx);
            for (int j = 0; j < L; ++j)
                want[((size_t)m * L + i) * L + j] = j <= i ? (float)(std::exp(row[j] * scale - mx) / sum) : 0.0f;
        }
    std::vector<float> got = S;
    launch(fasp_attention_softmax_causal_f32, dim3(37), dim3(32), got.data(), nmat, L, scale);
    // sliding window W = 7: row i over i-W < j <= i
    const int W = 7;
    std::vector<float> wantw(S.size());
    for (int m = 0; m < nmat; ++m)
        for (int i = 0; i < L; ++i) {
            const float* row = &S[((size_t)m * L + i) * L];
            const int lo = std::max(0, i - W + 1);
            double mx = -INFINITY, sum = 0;
            for (int j = lo; j <= i; ++j) mx = std::max(mx, (double)row[j] * scale);
            for (int j = lo; j <= i; ++j) sum += std::exp(row[j] * scale - mx);
            for (int j = 0; j < L; ++j)
                wantw[((size_t)m * L + i) * L + j] = j >= lo && j <= i ? (float)(std::exp(row[j] * scale - mx) / sum) : 0.0f;
        }
    std::vector<float> gotw = S;
    launch(fasp_attention_softmax_window_f32, dim3(41), dim3(64), gotw.data(), nmat, L, scale, W);
    // split (GQA group 2) and merge round trip
    const int batch = 2, Lq = 3, heads = 2, hd = 4, group = 2, ld = 20, col0 = 3;
    auto src = randn((size_t)batch * Lq * ld);
    std::vector<float> dst((size_t)batch * heads * group * Lq * hd), wantd(dst.size());
    for (int b = 0; b < batch; ++b)
        for (int hp = 0; hp < heads * group; ++hp)
            for (int l = 0; l < Lq; ++l)
                for (int dd = 0; dd < hd; ++dd)
                    wantd[(((size_t)b * heads * group + hp) * Lq + l) * hd + dd] =
                        src[(b * Lq + l) * ld + col0 + (hp / group) * hd + dd];
    launch(fasp_attention_split_heads_f32, dim3(1), dim3(256), src.data(), batch, Lq, heads, hd, ld, col0, group,
           dst.data());
    const int mh = heads * group;
    std::vector<float> merged((size_t)batch * Lq * mh * hd), wantm(merged.size());
    for (int b = 0; b < batch; ++b)
        for (int l = 0; l < Lq; ++l)
            for (int h = 0; h < mh; ++h)
                for (int dd = 0; dd < hd; ++dd)
                    wantm[((size_t)b * Lq + l) * mh * hd + h * hd + dd] = wantd[(((size_t)b * mh + h) * Lq + l) * hd + dd];
    launch(fasp_attention_merge_heads_f32, dim3(1), dim3(256), dst.data(), batch, Lq, mh, hd, merged.data());
    return close("softmax", got, want, 1e-6, 1e-5) && close("softmax window", gotw, wantw, 1e-6, 1e-5) &&
           close("split_heads", dst, wantd, 0, 0) &&
           close("merge_heads", merged, wantm, 0, 0);
}

static bool test_elementwise() {
    const long long n = 1000;
    auto a = randn(n, 5.0f), b = randn(n);
    a[3] = NAN;
    std::vector<float> r = a, wr(n), s(n), ws(n), ad(n), wad(n), gl = b, wg(n);
    for (long long i = 0; i < n; ++i) {
        wr[i] = std::isnan(a[i]) ? a[i] : std::max(a[i], 0.0f);
        ws[i] = (float)(a[i] / (1.0 + std::exp(-(double)a[i])) * b[i]);
        const double g = a[i];
        wg[i] = (float)(b[i] * 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))));
        wad[i] = a[i] + b[i];
    }
    launch(fasp_relu_f32, dim3(2), dim3(256), r.data(), n);
    launch(fasp_silu_mul_f32, dim3(3), dim3(256), a.data(), b.data(), s.data(), n);
    launch(fasp_add_f32, dim3(4), dim3(256), a.data(), b.data(), ad.data(), n);
    launch(fasp_gelu_tanh_mul_f32, dim3(3), dim3(256), a.data(), gl.data(), gl.data(), n);
    const int rows = 10, cols = 100;
    auto x = randn(rows * cols), bias = randn(cols);
    std::vector<float> xb = x, wxb(x.size());
    for (int i = 0; i < rows * cols; ++i) wxb[i] = x[i] + bias[i % cols];
    launch(fasp_add_bias_f32, dim3(1), dim3(256), xb.data(), bias.data(), rows, cols);
    std::vector<bf16> hb(n);
    std::vector<float> back(n), wback(n);
    launch(fasp_convert_f32_to_bf16, dim3(1), dim3(256), b.data(), hb.data(), n);
    launch(fasp_convert_bf16_to_f32, dim3(1), dim3(256), (const bf16*)hb.data(), back.data(), n);
    for (long long i = 0; i < n; ++i) wback[i] = __bfloat162float(__float2bfloat16_rn(b[i]));
    int f1 = 0, f2 = 0, f3 = 0;
    launch(fasp_check_finite_f32, dim3(2), dim3(256), b.data(), n, &f1);
    launch(fasp_check_finite_f32, dim3(2), dim3(256), a.data(), n, &f2);
    std::vector<bf16> inf_b(10, __float2bfloat16_rn(1.0f));
    inf_b[9] = __float2bfloat16_rn(INFINITY);
    launch(fasp_check_finite_bf16, dim3(1), dim3(256), (const bf16*)inf_b.data(), 10LL, &f3);
    const bool flags = f1 == 0 && f2 == 1 && f3 == 1;
    if (!flags) printf("  finite flags %d %d %d, want 0 1 1\n", f1, f2, f3);
    return close("relu", r, wr, 0, 0) && close("silu_mul", s, ws, 1e-6, 1e-5) &&
           close("gelu_tanh_mul in place", gl, wg, 1e-6, 1e-5) && close("add", ad, wad, 0, 0) &&
           close("add_bias", xb, wxb, 0, 0) && close("bf16 round trip", back, wback, 0, 0) && flags;
}

static bool test_embed() {
    const int vocab = 20, d = 33, ntok = 7, npos = 12, seqlen = 4, offset = 2;
    auto table = randn(vocab * d), pos = randn(npos * d);
    std::vector<int> ids = {0, 19, 5, 5, 3, 7, 20};  // last one out of range
    std::vector<float> out(ntok * d), want(ntok * d);
    for (int t = 0; t < ntok; ++t)
        for (int c = 0; c < d; ++c)
            want[t * d + c] = ids[t] < vocab ? table[ids[t] * d + c] + pos[(t % seqlen + offset) * d + c] : NAN;
    launch(fasp_embed_gather_f32, dim3(1, 3), dim3(256), ids.data(), ntok, table.data(), vocab, d, out.data());
    launch(fasp_embed_add_positions_f32, dim3(1, 3), dim3(256), out.data(), ntok, d, pos.data(), npos,
           (const int*)nullptr, seqlen, offset);
    std::vector<bf16> tb(table.size());
    for (size_t i = 0; i < table.size(); ++i) tb[i] = __float2bfloat16_rn(table[i]);
    std::vector<float> outb(ntok * d), wantb(ntok * d);
    for (int t = 0; t < ntok; ++t)
        for (int c = 0; c < d; ++c) wantb[t * d + c] = ids[t] < vocab ? __bfloat162float(tb[ids[t] * d + c]) : NAN;
    launch(fasp_embed_gather_bf16, dim3(1, 7), dim3(256), ids.data(), ntok, (const bf16*)tb.data(), vocab, d,
           outb.data());
    return close("embed+pos", out, want, 0, 1e-7) && close("embed bf16", outb, wantb, 0, 0);
}

static bool test_stats() {
    bool ok = true;
    for (int from_lower : {1, 0}) {
        const int n = 70, ldh = 75;
        auto H = randn((size_t)n * ldh);
        std::vector<float> want = H;
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j)
                if (from_lower ? j > i : j < i) want[i * ldh + j] = H[j * ldh + i];
        launch(fasp_stats_symmetrize_f32, dim3(cdiv(n, 32), cdiv(n, 32)), dim3(32, 8), H.data(), n, ldh, from_lower);
        ok &= close("symmetrize", H, want, 0, 0);
        std::vector<float> dg(n), wd(n);
        for (int i = 0; i < n; ++i) wd[i] = H[i * ldh + i];
        launch(fasp_stats_diag_f32, dim3(1), dim3(256), H.data(), n, ldh, dg.data());
        ok &= close("diag", dg, wd, 0, 0);
    }
    const long long n = 5000;
    auto a = randn(n), b = randn(n);
    std::vector<double> acc(n, 1.0);
    launch(fasp_stats_accumulate_f64, dim3(3), dim3(256), acc.data(), a.data(), n);
    std::vector<float> af(n), waf(n);
    launch(fasp_stats_f64_to_f32, dim3(3), dim3(256), (const double*)acc.data(), af.data(), n);
    for (long long i = 0; i < n; ++i) waf[i] = (float)(1.0 + (double)a[i]);
    ok &= close("accumulate", af, waf, 0, 0);
    const int P = 7;
    std::vector<double> part(P), out(2);
    launch(fasp_stats_sumsq_partial_f32, dim3(P), dim3(256), a.data(), b.data(), n, part.data());
    launch(fasp_stats_sum_f64, dim3(1), dim3(256), (const double*)part.data(), P, out.data());
    launch(fasp_stats_sumsq_partial_f32, dim3(P), dim3(256), a.data(), (const float*)nullptr, n, part.data());
    launch(fasp_stats_sum_f64, dim3(1), dim3(256), (const double*)part.data(), P, out.data() + 1);
    double w0 = 0, w1 = 0;
    for (long long i = 0; i < n; ++i) {
        w0 += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        w1 += (double)a[i] * a[i];
    }
    ok &= close("sumsq", out, std::vector<double>{w0, w1}, 0, 1e-12);
    return ok;
}

// The suite, run by the Rust test `emu_kernel_families` (tests/emu.rs) through the crate's emulation library.
// `only` selects one family (NULL or "" = all). Returns the number of failed families.
extern "C" int fasp_emu_selftest(const char* only_c, int* passed, int* failed) {
    const std::string only = only_c ? only_c : "";
    g_passed = g_failed = 0;
    rng.seed(12345);
    const std::pair<const char*, bool (*)()> tests[] = {
        {"score", test_score},     {"topk", test_topk},         {"compact", test_compact},
        {"cholesky", test_cholesky}, {"norm", test_norms},        {"rope", test_rope},
        {"attention", test_attention}, {"elementwise", test_elementwise}, {"embed", test_embed},
        {"stats", test_stats},
    };
    for (auto& [name, f] : tests)
        if (only.empty() || only == name) run(name, f);
    printf("kernel families: %d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout);
    if (passed) *passed = g_passed;
    if (failed) *failed = g_failed;
    return g_failed;
}
