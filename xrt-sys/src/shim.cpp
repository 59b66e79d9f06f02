// C ABI over XRT's native C++ API, for Rust. XRT's hw_context (needed for NPU xclbins) has no C
// binding, hence this file. It follows the host flow of mlir-aie's runtime_lib/test_lib:
// xrt::device -> xrt::xclbin -> device.register_xclbin -> xrt::hw_context -> xrt::kernel ->
// buffer objects in the kernel's memory groups -> xrt::run (opcode, instructions, count, BOs).
//
// Compiled by build.rs only where XRT's headers were found; never compiled against XRT where
// this was written (no XRT there), only syntax-checked against stand-ins (tests/shim_syntax.rs).

#include "xrt_shim.h"

#include <xrt/xrt_bo.h>
#include <xrt/xrt_device.h>
#include <xrt/xrt_kernel.h>

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

struct xrt_shim_device {
  xrt::device device;
};

struct xrt_shim_context {
  xrt::device device;
  xrt::xclbin xclbin;
  xrt::hw_context context;
};

struct xrt_shim_kernel {
  xrt::kernel kernel;
};

struct xrt_shim_bo {
  xrt::bo bo;
  size_t bytes;
};

struct xrt_shim_run {
  xrt::run run;
};

namespace {

thread_local std::string last_error;

int fail(const std::string &what) {
  last_error = what;
  return 1;
}

// Runs f, turning any exception into a failure with its message.
template <typename F> int guarded(const char *what, F &&f) {
  try {
    return f();
  } catch (const std::exception &e) {
    return fail(std::string(what) + ": " + e.what());
  } catch (...) {
    return fail(std::string(what) + ": unknown C++ exception");
  }
}

} // namespace

extern "C" {

const char *xrt_shim_last_error(void) { return last_error.c_str(); }

int xrt_shim_device_open(uint32_t index, xrt_shim_device **out) {
  if (!out)
    return fail("xrt_shim_device_open: null output");
  return guarded("opening XRT device", [&] {
    *out = new xrt_shim_device{xrt::device(index)};
    return 0;
  });
}

void xrt_shim_device_close(xrt_shim_device *device) { delete device; }

int xrt_shim_context_create(xrt_shim_device *device, const char *xclbin_path,
                            xrt_shim_context **out) {
  if (!device || !xclbin_path || !out)
    return fail("xrt_shim_context_create: null argument");
  return guarded("loading xclbin", [&] {
    xrt::xclbin xclbin{std::string(xclbin_path)};
    device->device.register_xclbin(xclbin);
    xrt::hw_context context(device->device, xclbin.get_uuid());
    *out = new xrt_shim_context{device->device, xclbin, context};
    return 0;
  });
}

void xrt_shim_context_free(xrt_shim_context *context) { delete context; }

int xrt_shim_kernel_open(xrt_shim_context *context, const char *name_prefix,
                         xrt_shim_kernel **out) {
  if (!context || !name_prefix || !out)
    return fail("xrt_shim_kernel_open: null argument");
  return guarded("opening kernel", [&] {
    std::string prefix(name_prefix);
    std::string names;
    for (const auto &k : context->xclbin.get_kernels()) {
      std::string name = k.get_name();
      if (name.rfind(prefix, 0) == 0) {
        *out = new xrt_shim_kernel{xrt::kernel(context->context, name)};
        return 0;
      }
      names += (names.empty() ? "" : ", ") + name;
    }
    return fail("no kernel named " + prefix + "* in the xclbin (it has: " +
                (names.empty() ? std::string("none") : names) + ")");
  });
}

int xrt_shim_kernel_group_id(xrt_shim_kernel *kernel, int32_t arg_index, int32_t *out) {
  if (!kernel || !out)
    return fail("xrt_shim_kernel_group_id: null argument");
  return guarded("reading kernel memory group", [&] {
    *out = static_cast<int32_t>(kernel->kernel.group_id(arg_index));
    return 0;
  });
}

void xrt_shim_kernel_close(xrt_shim_kernel *kernel) { delete kernel; }

int xrt_shim_bo_alloc(xrt_shim_device *device, size_t bytes, int32_t kind, int32_t group_id,
                      xrt_shim_bo **out) {
  if (!device || !out)
    return fail("xrt_shim_bo_alloc: null argument");
  if (kind != XRT_SHIM_BO_DATA && kind != XRT_SHIM_BO_INSTRUCTIONS)
    return fail("xrt_shim_bo_alloc: unknown buffer kind " + std::to_string(kind));
  return guarded("allocating buffer object", [&] {
    auto flags = kind == XRT_SHIM_BO_INSTRUCTIONS ? xrt::bo::flags::cacheable
                                                  : xrt::bo::flags::host_only;
    xrt::bo bo(device->device, bytes, flags, static_cast<xrt::memory_group>(group_id));
    *out = new xrt_shim_bo{bo, bytes};
    return 0;
  });
}

int xrt_shim_bo_map(xrt_shim_bo *bo, void **out, size_t *bytes) {
  if (!bo || !out || !bytes)
    return fail("xrt_shim_bo_map: null argument");
  return guarded("mapping buffer object", [&] {
    *out = bo->bo.map<void *>();
    *bytes = bo->bytes;
    return 0;
  });
}

int xrt_shim_bo_sync(xrt_shim_bo *bo, int32_t to_device) {
  if (!bo)
    return fail("xrt_shim_bo_sync: null buffer");
  return guarded("syncing buffer object", [&] {
    bo->bo.sync(to_device ? XCL_BO_SYNC_BO_TO_DEVICE : XCL_BO_SYNC_BO_FROM_DEVICE);
    return 0;
  });
}

void xrt_shim_bo_free(xrt_shim_bo *bo) { delete bo; }

int xrt_shim_run_start(xrt_shim_kernel *kernel, const xrt_shim_arg *args, size_t n_args,
                       xrt_shim_run **out) {
  if (!kernel || (!args && n_args) || !out)
    return fail("xrt_shim_run_start: null argument");
  return guarded("starting run", [&] {
    xrt::run run(kernel->kernel);
    for (size_t i = 0; i < n_args; ++i) {
      const auto &a = args[i];
      int index = static_cast<int>(i);
      if (a.kind == XRT_SHIM_ARG_BO) {
        if (!a.bo)
          return fail("argument " + std::to_string(i) + " is a null buffer object");
        run.set_arg(index, a.bo->bo);
      } else if (a.kind == XRT_SHIM_ARG_SCALAR) {
        // The width comes from the caller (the manifest): XRT copies the value's bytes into
        // the command packet at the argument's offset.
        if (a.scalar_bytes == 4) {
          if (a.scalar > 0xffffffffu)
            return fail("argument " + std::to_string(i) + " does not fit 32 bits");
          run.set_arg(index, static_cast<uint32_t>(a.scalar));
        } else if (a.scalar_bytes == 8) {
          run.set_arg(index, static_cast<uint64_t>(a.scalar));
        } else {
          return fail("argument " + std::to_string(i) + " has scalar width " +
                      std::to_string(a.scalar_bytes) + " (4 or 8)");
        }
      } else {
        return fail("argument " + std::to_string(i) + " has unknown kind " +
                    std::to_string(a.kind));
      }
    }
    run.start();
    *out = new xrt_shim_run{run};
    return 0;
  });
}

int xrt_shim_run_wait(xrt_shim_run *run, uint32_t timeout_ms, int32_t *outcome, int32_t *state) {
  if (!run || !outcome || !state)
    return fail("xrt_shim_run_wait: null argument");
  return guarded("waiting for run", [&] {
    ert_cmd_state s = timeout_ms ? run->run.wait(std::chrono::milliseconds(timeout_ms))
                                 : run->run.wait();
    *state = static_cast<int32_t>(s);
    if (s == ERT_CMD_STATE_COMPLETED)
      *outcome = XRT_SHIM_RUN_COMPLETED;
    else if (s == ERT_CMD_STATE_TIMEOUT)
      *outcome = XRT_SHIM_RUN_TIMEOUT;
    else
      *outcome = XRT_SHIM_RUN_FAILED;
    return 0;
  });
}

void xrt_shim_run_free(xrt_shim_run *run) { delete run; }

} // extern "C"
