/* C ABI of the XRT shim (src/shim.cpp). Every function returning int returns 0 on success and
 * non-zero on failure; the failure's message is then in xrt_shim_last_error() (per thread,
 * valid until the next shim call on that thread). Handles are owned by the caller and released
 * with the matching *_free / *_close function. */
#ifndef XRT_SHIM_H
#define XRT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xrt_shim_device xrt_shim_device;
typedef struct xrt_shim_context xrt_shim_context;
typedef struct xrt_shim_kernel xrt_shim_kernel;
typedef struct xrt_shim_bo xrt_shim_bo;
typedef struct xrt_shim_run xrt_shim_run;

/* Buffer-object kinds: data (XRT host_only, as mlir-aie's data BOs) or instructions
 * (cacheable, as mlir-aie's instruction BO). */
enum { XRT_SHIM_BO_DATA = 0, XRT_SHIM_BO_INSTRUCTIONS = 1 };
/* Kernel-argument kinds. */
enum { XRT_SHIM_ARG_SCALAR = 0, XRT_SHIM_ARG_BO = 1 };
/* Run outcomes of xrt_shim_run_wait. */
enum { XRT_SHIM_RUN_COMPLETED = 0, XRT_SHIM_RUN_TIMEOUT = 1, XRT_SHIM_RUN_FAILED = 2 };

typedef struct xrt_shim_arg {
  int32_t kind;       /* XRT_SHIM_ARG_* */
  uint32_t scalar_bytes; /* 4 or 8: width of a SCALAR as the kernel's argument metadata declares */
  uint64_t scalar;    /* value when kind is SCALAR */
  xrt_shim_bo *bo;    /* buffer when kind is BO */
} xrt_shim_arg;

const char *xrt_shim_last_error(void);

int xrt_shim_device_open(uint32_t index, xrt_shim_device **out);
void xrt_shim_device_close(xrt_shim_device *device);

/* Loads the xclbin, registers it with the device and creates a hardware context for it. */
int xrt_shim_context_create(xrt_shim_device *device, const char *xclbin_path,
                            xrt_shim_context **out);
void xrt_shim_context_free(xrt_shim_context *context);

/* Opens the first kernel of the context's xclbin whose name starts with name_prefix
 * ("MLIR_AIE" for mlir-aie designs). */
int xrt_shim_kernel_open(xrt_shim_context *context, const char *name_prefix,
                         xrt_shim_kernel **out);
int xrt_shim_kernel_group_id(xrt_shim_kernel *kernel, int32_t arg_index, int32_t *out);
void xrt_shim_kernel_close(xrt_shim_kernel *kernel);

int xrt_shim_bo_alloc(xrt_shim_device *device, size_t bytes, int32_t kind, int32_t group_id,
                      xrt_shim_bo **out);
int xrt_shim_bo_map(xrt_shim_bo *bo, void **out, size_t *bytes);
/* to_device: 1 = host to device, 0 = device to host. */
int xrt_shim_bo_sync(xrt_shim_bo *bo, int32_t to_device);
void xrt_shim_bo_free(xrt_shim_bo *bo);

/* Sets every argument in order and starts the run. */
int xrt_shim_run_start(xrt_shim_kernel *kernel, const xrt_shim_arg *args, size_t n_args,
                       xrt_shim_run **out);
/* Waits up to timeout_ms (0 = no limit); *outcome is XRT_SHIM_RUN_*; *state the raw
 * ert_cmd_state. Returns non-zero only when waiting itself failed. */
int xrt_shim_run_wait(xrt_shim_run *run, uint32_t timeout_ms, int32_t *outcome, int32_t *state);
void xrt_shim_run_free(xrt_shim_run *run);

#ifdef __cplusplus
}
#endif

#endif
