// Row-wise softmax cross-entropy and its gradient, in place, for the chunked fused
// linear cross-entropy (mome_core::linear_ce). Compiled at run time by NVRTC
// (mome_core::kernels::cuda); no headers: bf16 is raw 16-bit words (bf16.cuh, prepended).
//
// One block per row of z [rows, V] (logits of one chunk of positions):
//   pass 1: online max and sum of exp over the row (fp32), lse = max + log(sum);
//   loss[row] = lse - z[row, target]  (0 where target == -100, NaN where the target
//               is outside [0, V): never silently dropped);
//   pass 2: z[row, j] <- (softmax_j - [j == target]) * scale[0]  (0 for ignored rows),
//           the gradient of scale * sum(loss) with respect to z.
// z is read twice and written once; no other [rows, V] buffer exists. Same formula as
// the reference path mome_core::linear_ce::softmax_xent_grad_reference.

#define IGNORE_INDEX (-100LL)
#define NEG_INF __int_as_float(0xff800000)

// (m, s): running max and sum of exp(x - m). Merging two partial states.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    if (m2 == NEG_INF) return;
    if (m == NEG_INF) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * __expf(m - m2) + s2; m = m2; }
    else { s = s + s2 * __expf(m2 - m); }
}

__device__ __forceinline__ void push(float& m, float& s, float x) {
    if (x > m) { s = (m == NEG_INF ? 0.0f : s * __expf(m - x)) + 1.0f; m = x; }
    else { s += __expf(x - m); }
}

// Block-wide merge of (m, s); every thread gets the result. blockDim.x <= 1024.
__device__ void block_merge(float& m, float& s) {
    __shared__ float sm[32];
    __shared__ float ss[32];
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        merge(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int warps = (blockDim.x + 31) >> 5;
    if (lane == 0) { sm[warp] = m; ss[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? sm[lane] : NEG_INF;
        s = lane < warps ? ss[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, o);
            float s2 = __shfl_xor_sync(0xffffffffu, s, o);
            merge(m, s, m2, s2);
        }
        if (lane == 0) { sm[0] = m; ss[0] = s; }
    }
    __syncthreads();
    m = sm[0];
    s = ss[0];
}

extern "C" __global__ void softmax_xent_grad_bf16(
    unsigned short* __restrict__ z, const long long* __restrict__ targets,
    const float* __restrict__ scale, float* __restrict__ loss, int rows, int V) {
    int row = blockIdx.x;
    if (row >= rows) return;
    unsigned short* zr = z + (size_t)row * (size_t)V;
    long long t = targets[row];
    bool ignored = t == IGNORE_INDEX;
    bool valid = !ignored && t >= 0 && t < V;
    float zt = valid ? bf16_to_f32(zr[t]) : 0.0f;

    float m = NEG_INF, s = 0.0f;
    bool vec = (V & 7) == 0;  // rows of whole 16-byte words (the pointer is aligned then)
    if (vec) {
        const uint4* zv = reinterpret_cast<const uint4*>(zr);
        int n = V >> 3;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            uint4 w = zv[i];
            unsigned int p[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                push(m, s, __uint_as_float(p[k] << 16));
                push(m, s, __uint_as_float(p[k] & 0xffff0000u));
            }
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) push(m, s, bf16_to_f32(zr[i]));
    }
    block_merge(m, s);
    float lse = m + __logf(s);
    if (threadIdx.x == 0) {
        loss[row] = ignored ? 0.0f : (valid ? lse - zt : __int_as_float(0x7fc00000));
    }
    float sc = valid ? scale[0] : 0.0f;
    if (vec) {
        uint4* zv = reinterpret_cast<uint4*>(zr);
        int n = V >> 3;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            uint4 w = zv[i];
            unsigned int p[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                int j = (i << 3) + 2 * k;
                float lo = __expf(__uint_as_float(p[k] << 16) - lse);
                float hi = __expf(__uint_as_float(p[k] & 0xffff0000u) - lse);
                if (j == t) lo -= 1.0f;
                if (j + 1 == t) hi -= 1.0f;
                p[k] = (unsigned int)f32_to_bf16(lo * sc) | ((unsigned int)f32_to_bf16(hi * sc) << 16);
            }
            zv[i] = make_uint4(p[0], p[1], p[2], p[3]);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            float g = __expf(bf16_to_f32(zr[i]) - lse);
            if (i == t) g -= 1.0f;
            zr[i] = f32_to_bf16(g * sc);
        }
    }
}

extern "C" __global__ void softmax_xent_grad_f32(
    float* __restrict__ z, const long long* __restrict__ targets,
    const float* __restrict__ scale, float* __restrict__ loss, int rows, int V) {
    int row = blockIdx.x;
    if (row >= rows) return;
    float* zr = z + (size_t)row * (size_t)V;
    long long t = targets[row];
    bool ignored = t == IGNORE_INDEX;
    bool valid = !ignored && t >= 0 && t < V;
    float zt = valid ? zr[t] : 0.0f;
    float m = NEG_INF, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) push(m, s, zr[i]);
    block_merge(m, s);
    float lse = m + logf(s);
    if (threadIdx.x == 0) {
        loss[row] = ignored ? 0.0f : (valid ? lse - zt : __int_as_float(0x7fc00000));
    }
    float sc = valid ? scale[0] : 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = expf(zr[i] - lse);
        if (i == t) g -= 1.0f;
        zr[i] = g * sc;
    }
}

// ---------------------------------------------------------------------------------
// Cross-entropy plus a dense KD term against a teacher's logits, and their summed
// gradient, in place: the chunk step of mome-distill's fused linear KD.
//
// One block per row r of z [rows, V] (student logits) and zt [rows, V] (teacher
// logits, same kind), with T the temperature (inv_t = 1/T):
//   pass 1: online logsumexps of z (lse_a), z/T (lse_b) and zt/T (lse_c);
//   ce[r]  = lse_a - z[r, target]  (as softmax_xent_grad: 0 ignored, NaN outside V);
//   s = z/T - lse_b (student log q), t = zt/T - lse_c (teacher log p);
//   kd[r]  = t2 * sum_{p > 0} p (t - s)   (forward KL; twce != 0: -t2 sum_{p > 0} p s);
//   pass 2: z[r, j] <- scale[0] (softmax(z)_j - [j == target]) + scale[1] (q_j - p_j),
//           the gradient of scale[0] * sum(ce) + (scale[1] / T) * sum(kd / t2 * T^2)
//           with respect to z (the caller folds T and the weights into scale[1]).
// z and zt are read twice each, z written once. Same arithmetic as the reference
// path mome_core::kernels::kd_xent_grad_reference.

__device__ float block_sum(float x) {
    __shared__ float sh[32];
    __syncthreads();
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int warps = (blockDim.x + 31) >> 5;
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = lane < warps ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

struct KdRow {
    float lse_a, lse_b, lse_c, inv_t, ce_sc, kd_sc;
    long long t;
    int twce;
};

// The gradient of one element, accumulating its KD term into acc.
__device__ __forceinline__ float kd_elem(const KdRow& r, float x, float y, long long j, float& acc) {
    float s = x * r.inv_t - r.lse_b;
    float t = y * r.inv_t - r.lse_c;
    float p = __expf(t);
    float q = __expf(s);
    if (p > 0.0f) acc += r.twce ? -p * s : p * (t - s);
    float g = __expf(x - r.lse_a);
    if (j == r.t) g -= 1.0f;
    return r.ce_sc * g + r.kd_sc * (q - p);
}

extern "C" __global__ void kd_xent_grad_bf16(
    unsigned short* __restrict__ z, const unsigned short* __restrict__ zt,
    const long long* __restrict__ targets, const float* __restrict__ scale,
    float* __restrict__ ce, float* __restrict__ kd, int rows, int V, float inv_t, float t2,
    int twce) {
    int row = blockIdx.x;
    if (row >= rows) return;
    unsigned short* zr = z + (size_t)row * (size_t)V;
    const unsigned short* yr = zt + (size_t)row * (size_t)V;
    long long t = targets[row];
    bool ignored = t == IGNORE_INDEX;
    bool valid = !ignored && t >= 0 && t < V;
    float z_target = valid ? bf16_to_f32(zr[t]) : 0.0f;
    float ma = NEG_INF, sa = 0.0f, mb = NEG_INF, sb = 0.0f, mc = NEG_INF, sc = 0.0f;
    bool vec = (V & 7) == 0;
    if (vec) {
        const uint4* zv = reinterpret_cast<const uint4*>(zr);
        const uint4* yv = reinterpret_cast<const uint4*>(yr);
        int n = V >> 3;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            uint4 w = zv[i], u = yv[i];
            unsigned int p[4] = {w.x, w.y, w.z, w.w};
            unsigned int q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float x0 = __uint_as_float(p[k] << 16), x1 = __uint_as_float(p[k] & 0xffff0000u);
                float y0 = __uint_as_float(q[k] << 16), y1 = __uint_as_float(q[k] & 0xffff0000u);
                push(ma, sa, x0); push(ma, sa, x1);
                push(mb, sb, x0 * inv_t); push(mb, sb, x1 * inv_t);
                push(mc, sc, y0 * inv_t); push(mc, sc, y1 * inv_t);
            }
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            float x = bf16_to_f32(zr[i]), y = bf16_to_f32(yr[i]);
            push(ma, sa, x); push(mb, sb, x * inv_t); push(mc, sc, y * inv_t);
        }
    }
    block_merge(ma, sa);
    __syncthreads();
    block_merge(mb, sb);
    __syncthreads();
    block_merge(mc, sc);
    KdRow r;
    r.lse_a = ma + __logf(sa);
    r.lse_b = mb + __logf(sb);
    r.lse_c = mc + __logf(sc);
    r.inv_t = inv_t;
    r.ce_sc = valid ? scale[0] : 0.0f;
    r.kd_sc = scale[1];
    r.t = t;
    r.twce = twce;
    float acc = 0.0f;
    if (vec) {
        uint4* zv = reinterpret_cast<uint4*>(zr);
        const uint4* yv = reinterpret_cast<const uint4*>(yr);
        int n = V >> 3;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            uint4 w = zv[i], u = yv[i];
            unsigned int p[4] = {w.x, w.y, w.z, w.w};
            unsigned int q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                long long j = (long long)(i << 3) + 2 * k;
                float lo = kd_elem(r, __uint_as_float(p[k] << 16), __uint_as_float(q[k] << 16), j, acc);
                float hi = kd_elem(r, __uint_as_float(p[k] & 0xffff0000u),
                                   __uint_as_float(q[k] & 0xffff0000u), j + 1, acc);
                p[k] = (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
            }
            zv[i] = make_uint4(p[0], p[1], p[2], p[3]);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            zr[i] = f32_to_bf16(kd_elem(r, bf16_to_f32(zr[i]), bf16_to_f32(yr[i]), i, acc));
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
        ce[row] = ignored ? 0.0f : (valid ? r.lse_a - z_target : __int_as_float(0x7fc00000));
        kd[row] = t2 * acc;
    }
}

extern "C" __global__ void kd_xent_grad_f32(
    float* __restrict__ z, const float* __restrict__ zt, const long long* __restrict__ targets,
    const float* __restrict__ scale, float* __restrict__ ce, float* __restrict__ kd, int rows,
    int V, float inv_t, float t2, int twce) {
    int row = blockIdx.x;
    if (row >= rows) return;
    float* zr = z + (size_t)row * (size_t)V;
    const float* yr = zt + (size_t)row * (size_t)V;
    long long t = targets[row];
    bool ignored = t == IGNORE_INDEX;
    bool valid = !ignored && t >= 0 && t < V;
    float z_target = valid ? zr[t] : 0.0f;
    float ma = NEG_INF, sa = 0.0f, mb = NEG_INF, sb = 0.0f, mc = NEG_INF, sc = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float x = zr[i], y = yr[i];
        push(ma, sa, x); push(mb, sb, x * inv_t); push(mc, sc, y * inv_t);
    }
    block_merge(ma, sa);
    __syncthreads();
    block_merge(mb, sb);
    __syncthreads();
    block_merge(mc, sc);
    KdRow r;
    r.lse_a = ma + logf(sa);
    r.lse_b = mb + logf(sb);
    r.lse_c = mc + logf(sc);
    r.inv_t = inv_t;
    r.ce_sc = valid ? scale[0] : 0.0f;
    r.kd_sc = scale[1];
    r.t = t;
    r.twce = twce;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) zr[i] = kd_elem(r, zr[i], yr[i], i, acc);
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
        ce[row] = ignored ? 0.0f : (valid ? r.lse_a - z_target : __int_as_float(0x7fc00000));
        kd[row] = t2 * acc;
    }
}
