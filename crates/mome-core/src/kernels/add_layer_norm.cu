// Residual add + layer norm, forward and backward, for mome_core::norm (the pre-LN
// transformer block's `h = x + y; ln(h)`). Compiled at run time by NVRTC
// (mome_core::kernels); no headers: bf16 is raw 16-bit words (bf16.cuh, prepended).
//
// Rows of width d <= 1024; one warp per row, lane l holds columns l, l + 32, ...
// (COLS = 32 per lane at most), so every reduction is a warp shuffle.
//
// Forward, per row (x the residual and w / b the parameters in TX, y the branch in TY
// or absent; arithmetic in fp32):
//   y' = keep(i) ? y * scale : 0     (dropout of the branch; keep(i) is a hash of the
//                                     seed and the element's index i, true with
//                                     probability 1 - p: `h >= threshold`; p = 0 keeps
//                                     everything with scale 1)
//   s = x + y', rounded to TX        (written to `sum` when y is present)
//   mu = mean(s), rstd = 1 / sqrt(mean((s - mu)^2) + eps)   (biased, as torch)
//   out = (s - mu) * rstd * w + b    (written in TO, rounded once)
//   mean[row] = mu, rstd[row] = rstd
// The sum lives in registers between the two passes: x and y are read once.
//
// Backward, per row (g = dL/d out in TO, gs = dL/d sum in TX or absent):
//   xh = (s - mu) * rstd, gw = g * w
//   ds = rstd * (gw - mean(gw) - xh * mean(gw * xh)) + gs
//   dx = ds (rounded to TX), dy = keep(i) ? ds * scale : 0 (rounded to TY, when y was
//   present; the mask is recomputed from the seed, never stored)
//   dw += g * xh, db += g   (per warp, over the rows it visits; written to
//                            dw_part / db_part [warps, d], summed by the caller)
// Same formulas as the reference path mome_core::kernels::add_ln_*_reference.

#define COLS 32

__device__ __forceinline__ float load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const unsigned short* p, size_t i) {
    return bf16_to_f32(p[i]);
}
__device__ __forceinline__ void store(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(unsigned short* p, size_t i, float v) {
    p[i] = f32_to_bf16(v);
}

// v rounded to T's precision.
__device__ __forceinline__ float round_to(const float*, float v) { return v; }
__device__ __forceinline__ float round_to(const unsigned short*, float v) {
    return bf16_to_f32(f32_to_bf16(v));
}

// A 32-bit integer hash (two xor-shift-multiply rounds).
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// Whether element i of the branch is kept (see the top of the file).
__device__ __forceinline__ bool keep(unsigned long long seed, unsigned long long i,
                                     unsigned int threshold) {
    unsigned int h = mix32((unsigned int)i ^ (unsigned int)seed);
    h = mix32(h ^ (unsigned int)(i >> 32) ^ (unsigned int)(seed >> 32));
    return h >= threshold;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename TX, typename TY, typename TO>
__device__ void add_ln_fwd(const TX* __restrict__ x, const TY* __restrict__ y,
                           const TX* __restrict__ w, const TX* __restrict__ b,
                           TX* __restrict__ sum, TO* __restrict__ out,
                           float* __restrict__ mean, float* __restrict__ rstd, int rows,
                           int d, float eps, const long long* __restrict__ seed_p,
                           unsigned int threshold, float scale) {
    const int warps = blockDim.x >> 5;
    const int row = blockIdx.x * warps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const size_t base = (size_t)row * (size_t)d;
    const unsigned long long seed = seed_p != nullptr ? (unsigned long long)*seed_p : 0ull;
    float v[COLS];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < COLS; k++) {
        const int c = lane + 32 * k;
        float t = 0.0f;
        if (c < d) {
            t = load(x, base + c);
            if (y != nullptr) {
                const float yv = keep(seed, base + c, threshold) ? load(y, base + c) * scale : 0.0f;
                t = round_to(x, t + yv);
                store(sum, base + c, t);
            }
        }
        v[k] = t;
        s += t;
    }
    const float mu = warp_sum(s) / (float)d;
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < COLS; k++) {
        const int c = lane + 32 * k;
        if (c < d) {
            const float e = v[k] - mu;
            q += e * e;
        }
    }
    const float rs = rsqrtf(warp_sum(q) / (float)d + eps);
#pragma unroll
    for (int k = 0; k < COLS; k++) {
        const int c = lane + 32 * k;
        if (c < d) store(out, base + c, (v[k] - mu) * rs * load(w, c) + load(b, c));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename TX, typename TY, typename TO>
__device__ void add_ln_bwd(const TX* __restrict__ s, const float* __restrict__ mean,
                           const float* __restrict__ rstd, const TX* __restrict__ w,
                           const TO* __restrict__ g, const TX* __restrict__ gs,
                           TX* __restrict__ dx, TY* __restrict__ dy,
                           float* __restrict__ dw_part, float* __restrict__ db_part, int rows,
                           int d, const long long* __restrict__ seed_p, unsigned int threshold,
                           float scale) {
    const int warps = blockDim.x >> 5;
    const int wid = blockIdx.x * warps + (threadIdx.x >> 5);
    const int nw = gridDim.x * warps;
    const int lane = threadIdx.x & 31;
    float aw[COLS], ab[COLS];
#pragma unroll
    for (int k = 0; k < COLS; k++) {
        aw[k] = 0.0f;
        ab[k] = 0.0f;
    }
    const float inv_d = 1.0f / (float)d;
    const unsigned long long seed = seed_p != nullptr ? (unsigned long long)*seed_p : 0ull;
    for (int row = wid; row < rows; row += nw) {
        const size_t base = (size_t)row * (size_t)d;
        const float mu = mean[row], rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int k = 0; k < COLS; k++) {
            const int c = lane + 32 * k;
            if (c < d) {
                const float xh = (load(s, base + c) - mu) * rs;
                const float gv = load(g, base + c);
                const float gw = gv * load(w, c);
                s1 += gw;
                s2 += gw * xh;
                aw[k] += gv * xh;
                ab[k] += gv;
            }
        }
        s1 = warp_sum(s1) * inv_d;
        s2 = warp_sum(s2) * inv_d;
#pragma unroll
        for (int k = 0; k < COLS; k++) {
            const int c = lane + 32 * k;
            if (c < d) {
                const float xh = (load(s, base + c) - mu) * rs;
                float r = rs * (load(g, base + c) * load(w, c) - s1 - xh * s2);
                if (gs != nullptr) r += load(gs, base + c);
                store(dx, base + c, r);
                if (dy != nullptr) {
                    store(dy, base + c, keep(seed, base + c, threshold) ? r * scale : 0.0f);
                }
            }
        }
    }
    const size_t pb = (size_t)wid * (size_t)d;
#pragma unroll
    for (int k = 0; k < COLS; k++) {
        const int c = lane + 32 * k;
        if (c < d) {
            dw_part[pb + c] = aw[k];
            db_part[pb + c] = ab[k];
        }
    }
}

// Instances: x / w / b / sum / dx in TX, y / dy in TY, out / g in TO, each fp32 (f32)
// or bf16 (raw 16-bit words).
#define ADD_LN(NX, TX, NY, TY, NO, TO)                                                   \
    extern "C" __global__ void add_ln_fwd_##NX##_##NY##_##NO(                            \
        const TX* x, const TY* y, const TX* w, const TX* b, TX* sum, TO* out,            \
        float* mean, float* rstd, const long long* seed, int rows, int d, float eps,     \
        unsigned int threshold, float scale) {                                           \
        add_ln_fwd<TX, TY, TO>(x, y, w, b, sum, out, mean, rstd, rows, d, eps, seed,     \
                               threshold, scale);                                        \
    }                                                                                    \
    extern "C" __global__ void add_ln_bwd_##NX##_##NY##_##NO(                            \
        const TX* s, const float* mean, const float* rstd, const TX* w, const TO* g,     \
        const TX* gs, TX* dx, TY* dy, float* dw_part, float* db_part,                    \
        const long long* seed, int rows, int d, unsigned int threshold, float scale) {   \
        add_ln_bwd<TX, TY, TO>(s, mean, rstd, w, g, gs, dx, dy, dw_part, db_part, rows, \
                               d, seed, threshold, scale);                               \
    }

#define ADD_LN_X(NX, TX)                                          \
    ADD_LN(NX, TX, f32, float, f32, float)                        \
    ADD_LN(NX, TX, f32, float, bf16, unsigned short)              \
    ADD_LN(NX, TX, bf16, unsigned short, f32, float)              \
    ADD_LN(NX, TX, bf16, unsigned short, bf16, unsigned short)

ADD_LN_X(f32, float)
ADD_LN_X(bf16, unsigned short)
