// The OpenCL runtime's operators besides GEMM, on contiguous row-major tensors stored as
// real_t (storage.cl) and computed in float.
// Shapes of up to 8 axes travel as int8 vectors, padded with 1 (sizes) and 0 (strides).

// Binary element-wise with broadcasting: out[i] = a[i'] OP b[i''], where the operands' strides
// are 0 along broadcast axes. OP: 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min, 6 pow.
__kernel void binary(const int count, const int8 shape, const int8 astride, const int8 bstride,
                     const __global real_t* a, const int aoff, const __global real_t* b,
                     const int boff, __global real_t* out, const int op)
{
    const int i = get_global_id(0);
    if (i >= count) return;
    int rest = i;
    int ai = aoff;
    int bi = boff;
    const int s[8] = {shape.s0, shape.s1, shape.s2, shape.s3, shape.s4, shape.s5, shape.s6, shape.s7};
    const int as[8] = {astride.s0, astride.s1, astride.s2, astride.s3, astride.s4, astride.s5, astride.s6, astride.s7};
    const int bs[8] = {bstride.s0, bstride.s1, bstride.s2, bstride.s3, bstride.s4, bstride.s5, bstride.s6, bstride.s7};
    for (int axis = 7; axis >= 0; axis--) {
        const int coord = rest % s[axis];
        rest /= s[axis];
        ai += coord * as[axis];
        bi += coord * bs[axis];
    }
    const float x = LD(a, ai);
    const float y = LD(b, bi);
    float r;
    switch (op) {
        case 0: r = x + y; break;
        case 1: r = x - y; break;
        case 2: r = x * y; break;
        case 3: r = x / y; break;
        case 4: r = fmax(x, y); break;
        case 5: r = fmin(x, y); break;
        default: r = pow(x, y); break;
    }
    ST(out, i, r);
}

// Unary element-wise. OP: 0 relu, 1 sigmoid, 2 tanh, 3 exp, 4 abs, 5 neg, 6 sqrt, 7 recip,
// 8 clip to [lo, hi], 9 log, 10 erf, 11 floor, 12 ceil, 13 square.
__kernel void unary(const int count, const __global real_t* x, __global real_t* out, const int op,
                    const float lo, const float hi)
{
    const int i = get_global_id(0);
    if (i >= count) return;
    const float v = LD(x, i);
    float r;
    switch (op) {
        case 0: r = fmax(v, 0.0f); break;
        case 1: r = 1.0f / (1.0f + exp(-v)); break;
        case 2: r = tanh(v); break;
        case 3: r = exp(v); break;
        case 4: r = fabs(v); break;
        case 5: r = -v; break;
        case 6: r = sqrt(v); break;
        case 7: r = 1.0f / v; break;
        case 8: r = clamp(v, lo, hi); break;
        case 9: r = log(v); break;
        case 10: r = erf(v); break;
        case 11: r = floor(v); break;
        case 12: r = ceil(v); break;
        default: r = v * v; break;
    }
    ST(out, i, r);
}

// Gathers a strided view into a contiguous tensor: out[i] = x[off + Σ coord·stride] over
// `shape`. Concatenation (into a slice of the output, by `out_off` and `ostride`), strided
// slicing (Downsample) and axis permutations are all this copy.
__kernel void copy_nd(const int count, const int8 shape, const int8 stride,
                      const __global real_t* x, const int off, __global real_t* out,
                      const int8 ostride, const int out_off)
{
    const int i = get_global_id(0);
    if (i >= count) return;
    int rest = i;
    int xi = off;
    int oi = out_off;
    const int s[8] = {shape.s0, shape.s1, shape.s2, shape.s3, shape.s4, shape.s5, shape.s6, shape.s7};
    const int xs[8] = {stride.s0, stride.s1, stride.s2, stride.s3, stride.s4, stride.s5, stride.s6, stride.s7};
    const int os[8] = {ostride.s0, ostride.s1, ostride.s2, ostride.s3, ostride.s4, ostride.s5, ostride.s6, ostride.s7};
    for (int axis = 7; axis >= 0; axis--) {
        const int coord = rest % s[axis];
        rest /= s[axis];
        xi += coord * xs[axis];
        oi += coord * os[axis];
    }
    ST(out, oi, LD(x, xi));
}

// Unfolds one image (and one group) of an NCHW input into the columns of a convolution as a
// matrix product: col[(c·KH + ki)·KW + kj][oy·OW + ox] = x[c][oy·SH - PH + ki·DH][ox·SW - PW + kj·DW],
// zero outside the image.
__kernel void im2col(const __global real_t* x, const int xoff, const int H, const int W,
                     const int C, const int KH, const int KW, const int SH, const int SW,
                     const int PH, const int PW, const int DH, const int DW, const int OH,
                     const int OW, __global real_t* col)
{
    const int p = get_global_id(0);
    const int k = get_global_id(1);
    if (p >= OH * OW || k >= C * KH * KW) return;
    const int kj = k % KW;
    const int ki = (k / KW) % KH;
    const int c = k / (KW * KH);
    const int oy = p / OW;
    const int ox = p % OW;
    const int iy = oy * SH - PH + ki * DH;
    const int ix = ox * SW - PW + kj * DW;
    float v = 0.0f;
    if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
        v = LD(x, xoff + (c * H + iy) * W + ix);
    }
    ST(col, k * (OH * OW) + p, v);
}

// Max or average pooling over NCHW planes; one work-item per output element. MODE: 0 max,
// 1 sum, 2 average over the window's cells inside the image, 3 average over the whole window
// (padding counted).
__kernel void pool2d(const int planes, const __global real_t* x, const int H, const int W,
                     const int KH, const int KW, const int SH, const int SW, const int PH,
                     const int PW, const int DH, const int DW, const int OH, const int OW,
                     __global real_t* out, const int mode)
{
    const int i = get_global_id(0);
    if (i >= planes * OH * OW) return;
    const int ox = i % OW;
    const int oy = (i / OW) % OH;
    const int plane = i / (OW * OH);
    const int src = plane * H * W;
    float acc = mode == 0 ? -INFINITY : 0.0f;
    int cells = 0;
    for (int ki = 0; ki < KH; ki++) {
        const int iy = oy * SH - PH + ki * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kj = 0; kj < KW; kj++) {
            const int ix = ox * SW - PW + kj * DW;
            if (ix < 0 || ix >= W) continue;
            const float v = LD(x, src + iy * W + ix);
            acc = mode == 0 ? fmax(acc, v) : acc + v;
            cells++;
        }
    }
    if (mode == 2) acc /= (float)max(cells, 1);
    if (mode == 3) acc /= (float)(KH * KW);
    ST(out, i, acc);
}

// Reduces the middle axis of [outer, R, inner]. MODE: 0 sum, 1 max, 2 min, 3 mean.
__kernel void reduce_mid(const int outer, const int R, const int inner,
                         const __global real_t* x, __global real_t* out, const int mode)
{
    const int i = get_global_id(0);
    if (i >= outer * inner) return;
    const int o = i / inner;
    const int n = i % inner;
    const int src = o * R * inner + n;
    float acc = mode == 1 ? -INFINITY : (mode == 2 ? INFINITY : 0.0f);
    for (int r = 0; r < R; r++) {
        const float v = LD(x, src + r * inner);
        acc = mode == 1 ? fmax(acc, v) : (mode == 2 ? fmin(acc, v) : acc + v);
    }
    if (mode == 3) acc /= (float)R;
    ST(out, i, acc);
}

// Softmax (or log-softmax, LOG = 1) along the middle axis of [outer, R, inner].
__kernel void softmax_mid(const int outer, const int R, const int inner,
                          const __global real_t* x, __global real_t* out, const int log_softmax)
{
    const int i = get_global_id(0);
    if (i >= outer * inner) return;
    const int base = (i / inner) * R * inner + i % inner;
    float top = -INFINITY;
    for (int r = 0; r < R; r++) top = fmax(top, LD(x, base + r * inner));
    float sum = 0.0f;
    for (int r = 0; r < R; r++) sum += exp(LD(x, base + r * inner) - top);
    const float log_sum = log(sum);
    for (int r = 0; r < R; r++) {
        const float shifted = LD(x, base + r * inner) - top;
        ST(out, base + r * inner, log_softmax ? shifted - log_sum : exp(shifted) / sum);
    }
}
