#pragma once
#include "xrt/xrt_bo.h"
#include <chrono>
enum ert_cmd_state { ERT_CMD_STATE_COMPLETED = 4, ERT_CMD_STATE_TIMEOUT = 8 };
namespace xrt {
class kernel {
public:
  kernel(const hw_context &, const std::string &);
  int group_id(int) const;
};
class run {
public:
  explicit run(const kernel &);
  template <typename T> void set_arg(int, T &&);
  void start();
  ert_cmd_state wait(const std::chrono::milliseconds &) const;
  ert_cmd_state wait() const;
};
}
