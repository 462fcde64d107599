// C = A·B (+ bias per column), row-major, in single precision over tensors stored as real_t
// (storage.cl).
//
// A work-group computes a TSM×TSN tile of C; each work-item a WPTM×WPTN block of it, held in
// registers. The K dimension is walked TSK at a time through local memory: A's tile is stored
// transposed (k-major) so that a work-item reads its rows of A and its columns of B as
// vectors, with a one-vector pad per row of A against bank conflicts on the transposing store.
// A work-item's rows and columns are interleaved with the other work-items' in vectors of
// VWM/VWN, so neighbouring work-items read neighbouring local addresses.
//
// Compile-time parameters (-D): TSM, TSN, TSK, WPTM, WPTN, VWM, VWN (1, 2 or 4), and
// GUARDED (sizes need not be multiples of the tiles: loads outside the matrices read zeros
// and stores outside are skipped), PREFETCH (the next tile is read from global memory into
// registers while the current one is multiplied), TRANS_A / TRANS_B (A is stored K×M, B N×K),
// BIAS_N / BIAS_M (add bias[n] to every row, or bias[m] to every column), RELU (max(0, ·)
// after the bias). Offsets (in elements) let one buffer hold many matrices.

#define RTSM (TSM / WPTM)
#define RTSN (TSN / WPTN)
#define THREADS (RTSM * RTSN)
#define LPTA ((TSM * TSK) / THREADS)
#define LPTB ((TSN * TSK) / THREADS)
#define ASTRIDE (TSM + VWM)
#define BSTRIDE (TSN + VWN)

#if VWM == 1
typedef float floatm;
#elif VWM == 2
typedef float2 floatm;
#else
typedef float4 floatm;
#endif

#if VWN == 1
typedef float floatn;
#elif VWN == 2
typedef float2 floatn;
#else
typedef float4 floatn;
#endif

// Element (m, k) of A and (k, n) of B, as stored.
#ifdef TRANS_A
#define AT(m, k) LD(A0, offA + (k) * lda + (m))
#else
#define AT(m, k) LD(A0, offA + (m) * lda + (k))
#endif
#ifdef TRANS_B
#define BT(k, n) LD(B0, offB + (n) * ldb + (k))
#else
#define BT(k, n) LD(B0, offB + (k) * ldb + (n))
#endif
#ifdef GUARDED
#define READ_A(m, k) (((m) < M && (k) < K) ? AT(m, k) : 0.0f)
#define READ_B(k, n) (((k) < K && (n) < N) ? BT(k, n) : 0.0f)
#else
#define READ_A(m, k) AT(m, k)
#define READ_B(k, n) BT(k, n)
#endif

// Which element of a tile the id-th load takes: neighbouring work-items read neighbouring
// addresses of the matrix as stored.
#ifdef TRANS_A
#define A_M(id) ((id) % TSM)
#define A_K(id) ((id) / TSM)
#else
#define A_M(id) ((id) / TSK)
#define A_K(id) ((id) % TSK)
#endif
#ifdef TRANS_B
#define B_K(id) ((id) % TSK)
#define B_N(id) ((id) / TSK)
#else
#define B_K(id) ((id) / TSN)
#define B_N(id) ((id) % TSN)
#endif

__kernel __attribute__((reqd_work_group_size(RTSN, RTSM, 1)))
void sgemm(const int M, const int N, const int K,
           const __global real_t* restrict A0, const int offA, const int lda,
           const __global real_t* restrict B0, const int offB, const int ldb,
#if defined(BIAS_N) || defined(BIAS_M)
           const __global real_t* restrict bias0, const int offBias,
#endif
           __global real_t* restrict C0, const int offC, const int ldc)
{
    const int tidn = get_local_id(0);
    const int tidm = get_local_id(1);
    const int tid = tidm * RTSN + tidn;
    const int offsetM = TSM * get_group_id(1);
    const int offsetN = TSN * get_group_id(0);

    // Declared as vectors so that the reads below are single vector loads; written as floats.
    __local floatm AsubV[TSK * ASTRIDE / VWM];
    __local floatn BsubV[TSK * BSTRIDE / VWN];
    __local float* Asub = (__local float*)AsubV;
    __local float* Bsub = (__local float*)BsubV;

    float acc[WPTM][WPTN];
    #pragma unroll
    for (int wm = 0; wm < WPTM; wm++) {
        #pragma unroll
        for (int wn = 0; wn < WPTN; wn++) {
            acc[wm][wn] = 0.0f;
        }
    }

#ifdef PREFETCH
    float nextA[LPTA];
    float nextB[LPTB];
    #pragma unroll
    for (int la = 0; la < LPTA; la++) {
        const int id = la * THREADS + tid;
        nextA[la] = READ_A(offsetM + A_M(id), A_K(id));
    }
    #pragma unroll
    for (int lb = 0; lb < LPTB; lb++) {
        const int id = lb * THREADS + tid;
        nextB[lb] = READ_B(B_K(id), offsetN + B_N(id));
    }
#endif

    const int tiles = (K + TSK - 1) / TSK;
    for (int t = 0; t < tiles; t++) {
        const int k0 = t * TSK;
#ifdef PREFETCH
        #pragma unroll
        for (int la = 0; la < LPTA; la++) {
            const int id = la * THREADS + tid;
            Asub[A_K(id) * ASTRIDE + A_M(id)] = nextA[la];
        }
        #pragma unroll
        for (int lb = 0; lb < LPTB; lb++) {
            const int id = lb * THREADS + tid;
            Bsub[B_K(id) * BSTRIDE + B_N(id)] = nextB[lb];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (t + 1 < tiles) {
            const int k1 = k0 + TSK;
            #pragma unroll
            for (int la = 0; la < LPTA; la++) {
                const int id = la * THREADS + tid;
                nextA[la] = READ_A(offsetM + A_M(id), k1 + A_K(id));
            }
            #pragma unroll
            for (int lb = 0; lb < LPTB; lb++) {
                const int id = lb * THREADS + tid;
                nextB[lb] = READ_B(k1 + B_K(id), offsetN + B_N(id));
            }
        }
#else
        #pragma unroll
        for (int la = 0; la < LPTA; la++) {
            const int id = la * THREADS + tid;
            Asub[A_K(id) * ASTRIDE + A_M(id)] = READ_A(offsetM + A_M(id), k0 + A_K(id));
        }
        #pragma unroll
        for (int lb = 0; lb < LPTB; lb++) {
            const int id = lb * THREADS + tid;
            Bsub[B_K(id) * BSTRIDE + B_N(id)] = READ_B(k0 + B_K(id), offsetN + B_N(id));
        }
        barrier(CLK_LOCAL_MEM_FENCE);
#endif

        #pragma unroll
        for (int k = 0; k < TSK; k++) {
            float a[WPTM];
            float b[WPTN];
            #pragma unroll
            for (int g = 0; g < WPTM / VWM; g++) {
#if VWM == 1
                a[g] = Asub[k * ASTRIDE + g * RTSM + tidm];
#else
                const floatm v = AsubV[k * (ASTRIDE / VWM) + g * RTSM + tidm];
                #pragma unroll
                for (int i = 0; i < VWM; i++) {
                    a[g * VWM + i] = ((const float*)&v)[i];
                }
#endif
            }
            #pragma unroll
            for (int g = 0; g < WPTN / VWN; g++) {
#if VWN == 1
                b[g] = Bsub[k * BSTRIDE + g * RTSN + tidn];
#else
                const floatn vb = BsubV[k * (BSTRIDE / VWN) + g * RTSN + tidn];
                #pragma unroll
                for (int i = 0; i < VWN; i++) {
                    b[g * VWN + i] = ((const float*)&vb)[i];
                }
#endif
            }
            #pragma unroll
            for (int wm = 0; wm < WPTM; wm++) {
                #pragma unroll
                for (int wn = 0; wn < WPTN; wn++) {
                    acc[wm][wn] = mad(a[wm], b[wn], acc[wm][wn]);
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    #pragma unroll
    for (int wm = 0; wm < WPTM; wm++) {
        const int row = offsetM + ((wm / VWM) * RTSM + tidm) * VWM + wm % VWM;
        #pragma unroll
        for (int wn = 0; wn < WPTN; wn++) {
            const int col = offsetN + ((wn / VWN) * RTSN + tidn) * VWN + wn % VWN;
#ifdef GUARDED
            if (row < M && col < N)
#endif
            {
                float value = acc[wm][wn];
#ifdef BIAS_N
                value += LD(bias0, offBias + col);
#endif
#ifdef BIAS_M
                value += LD(bias0, offBias + row);
#endif
#ifdef RELU
                value = fmax(value, 0.0f);
#endif
                ST(C0, offC + row * ldc + col, value);
            }
        }
    }
}
