// How tensors are stored in global memory, prepended to every program. Without HALF they are
// floats; with HALF they are halves read and written through core OpenCL's vload_half and
// vstore_half (no cl_khr_fp16 needed, so every device has them), and all arithmetic stays in
// float: half the memory and bandwidth, single-precision sums.
#ifdef HALF
typedef half real_t;
#define LD(p, i) vload_half((i), (p))
#define ST(p, i, v) vstore_half_rte((v), (i), (p))
#else
typedef float real_t;
#define LD(p, i) ((p)[(i)])
#define ST(p, i, v) ((p)[(i)] = (v))
#endif
