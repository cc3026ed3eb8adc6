// A kernel-level trace of everything this process runs (libtorch's Kineto profiler,
// the one behind torch.profiler): CPU operators and CUDA kernels, saved as a Chrome
// trace (mome_core::profile::KernelTrace, `mome bench train --trace`).
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <set>

namespace {
std::set<torch::profiler::impl::ActivityType> activities(bool cuda) {
  std::set<torch::profiler::impl::ActivityType> a{torch::profiler::impl::ActivityType::CPU};
  if (cuda) {
    a.insert(torch::profiler::impl::ActivityType::CUDA);
  }
  return a;
}
} // namespace

extern "C" {

// Starts the trace (CUDA kernels too when `cuda`). Returns 0, or -1 with a message.
int mome_trace_start(int cuda, char *err, size_t err_len) {
  try {
    torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
    auto acts = activities(cuda != 0);
    torch::autograd::profiler::prepareProfiler(cfg, acts);
    torch::autograd::profiler::enableProfiler(cfg, acts);
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return -1;
  }
}

// Stops the trace and writes it to `path` (Chrome trace JSON), or drops it when
// `path` is null.
int mome_trace_stop(const char *path, char *err, size_t err_len) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (!result) {
      std::snprintf(err, err_len, "the profiler was not running");
      return -1;
    }
    if (path != nullptr) {
      result->save(path);
    }
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return -1;
  }
}

} // extern "C"
