// Stand-in declarations for a syntax check of src/shim.cpp where XRT is not installed: only the
// members the shim uses, with the signatures XRT documents (xrt_device.h, xrt_xclbin.h,
// xrt_hw_context.h). Not XRT; a real build uses the real headers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
namespace xrt {
struct uuid {};
class xclbin {
public:
  class kernel { public: std::string get_name() const; };
  explicit xclbin(const std::string &);
  std::vector<kernel> get_kernels() const;
  uuid get_uuid() const;
};
class device {
public:
  explicit device(unsigned int);
  uuid register_xclbin(const xclbin &);
};
class hw_context { public: hw_context(const device &, const uuid &); };
using memory_group = uint32_t;
}
