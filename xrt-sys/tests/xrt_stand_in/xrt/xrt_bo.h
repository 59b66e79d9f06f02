#pragma once
#include "xrt/xrt_device.h"
#include <cstddef>
enum xclBOSyncDirection { XCL_BO_SYNC_BO_TO_DEVICE = 0, XCL_BO_SYNC_BO_FROM_DEVICE };
namespace xrt {
class bo {
public:
  enum class flags : uint32_t { normal = 0, cacheable = 1, host_only = 2 };
  bo(const device &, size_t, flags, memory_group);
  void sync(xclBOSyncDirection);
  void *map();
  template <typename T> T map() { return reinterpret_cast<T>(map()); }
};
}
