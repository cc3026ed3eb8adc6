// Row-wise softmax cross-entropy and its gradient, in place, for the chunked fused
// linear cross-entropy (mome_core::linear_ce). Compiled at run time by NVRTC
// (mome_core::kernels::cuda); no headers, so bf16 is handled as raw 16-bit words.
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

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN kept NaN (as torch's float -> bfloat16 cast).
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

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
