// A planned DropBlock call in C++: the key, the row-word buffer, the mask kernel's launch and an
// autograd function whose forward and backward launch the product kernel, without Python in
// between (structdrop_tutorial/torch/_native.py builds and loads it; see its docstring).
//
// The kernels are the Triton kernels the Python plan launches, compiled by Triton: this file
// receives their CUfunction handles, launch geometry and argument values from Python and calls
// the driver's cuLaunchKernel through a function pointer it also receives, so it needs neither
// CUDA headers nor libcuda at build time. The current stream comes from c10's device guard
// (the raw cudaStream_t, as torch.cuda.current_stream().cuda_stream gives it).
#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

using LaunchFn = int (*)(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                         unsigned by, unsigned bz, unsigned shared, void* stream, void** params,
                         void** extra);

using CtxGetFn = int (*)(void** ctx);
using CtxSetFn = int (*)(void* ctx);

constexpr size_t kMaxParams = 64;

// One kernel's launch: every parameter has an 8-byte slot holding its value in the low bytes
// (the driver reads as many bytes as the parameter has; the host is little-endian).
struct Kernel {
  void* fn = nullptr;
  unsigned grid[3] = {1, 1, 1};
  unsigned threads = 32;
  unsigned shared = 0;
  std::vector<uint64_t> slots;
};

struct Plan : torch::CustomClassHolder {
  LaunchFn launch = nullptr;
  CtxGetFn ctx_get = nullptr;  // cuCtxGetCurrent and cuCtxSetCurrent, with the device's
  CtxSetFn ctx_set = nullptr;  // primary context: bound to a thread that has none
  void* ctx = nullptr;
  bool cuda = true;  // false: a test build's stand-in launcher on the CPU (no stream)
  int64_t device = 0;
  int64_t rows = 0;
  std::vector<int64_t> strides;  // the layout the product kernel reads and writes
  Kernel mask, prod;
  int mask_words = 0, mask_scratch = 0, mask_acc = 0, mask_key = 0;
  int prod_x = 0, prod_words = 0, prod_out = 0;
  std::atomic<int64_t> launches{0};  // counted, for tests (forward and backward threads)
  int64_t id = -1;                   // its number in the registry
};

// Every plan made, by number: autograd saves a plan's number, not the plan (compiled autograd
// hashes what a C++ node saves, and a capsule cannot be hashed). Plans are small and few (one
// per signature; the Python side keeps at most a few hundred at a time), so none is freed.
std::mutex registry_mutex;
std::vector<c10::intrusive_ptr<Plan>>& registry() {
  static auto* plans = new std::vector<c10::intrusive_ptr<Plan>>();
  return *plans;
}

int64_t enrol(const c10::intrusive_ptr<Plan>& plan) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry().push_back(plan);
  return static_cast<int64_t>(registry().size()) - 1;
}

c10::intrusive_ptr<Plan> enrolled(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  TORCH_CHECK(id >= 0 && id < static_cast<int64_t>(registry().size()), "no native plan ", id);
  return registry()[id];
}

void* current_stream(const Plan& p) {
  if (!p.cuda) return nullptr;
  const c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(p.device));
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device).native_handle();
}

void run(Plan& p, const Kernel& k, void* stream, const int* index, const uint64_t* value,
         int n) {
  uint64_t slots[kMaxParams] = {};
  void* params[kMaxParams];
  std::memcpy(slots, k.slots.data(), k.slots.size() * sizeof(uint64_t));
  for (int i = 0; i < n; ++i) slots[index[i]] = value[i];
  for (size_t i = 0; i < kMaxParams; ++i) params[i] = &slots[i];  // never a stray pointer
  if (p.ctx_get != nullptr) {  // autograd's device thread may not have bound a context yet
    void* current = nullptr;
    if (p.ctx_get(&current) != 0 || current == nullptr) p.ctx_set(p.ctx);
  }
  const int status = p.launch(k.fn, k.grid[0], k.grid[1], k.grid[2], k.threads, 1, 1, k.shared,
                              stream, params, nullptr);
  TORCH_CHECK(status == 0, "structdrop native DropBlock: cuLaunchKernel returned ", status);
  p.launches.fetch_add(1, std::memory_order_relaxed);
}

uint64_t address(const at::Tensor& t) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()));
}

// out = x * keep * scale from the row words: the product kernel on the current stream.
void product(Plan& p, const at::Tensor& x, const at::Tensor& words, const at::Tensor& out) {
  const int index[3] = {p.prod_x, p.prod_words, p.prod_out};
  const uint64_t value[3] = {address(x), address(words), address(out)};
  run(p, p.prod, current_stream(p), index, value, 3);
}

// The input in the layout the kernel was compiled for (the plan's strides, 16-byte aligned).
at::Tensor in_layout(const Plan& p, const at::Tensor& t) {
  if (t.strides() == c10::IntArrayRef(p.strides) && (address(t) & 15) == 0) return t;
  return at::empty_strided(t.sizes(), p.strides, t.options()).copy_(t);
}

at::Tensor plain_product(Plan& p, const at::Tensor& x, const at::Tensor& words) {
  at::Tensor out = at::empty_strided(x.sizes(), p.strides, x.options());
  product(p, x, words, out);
  return out;
}

// x * keep * scale as a differentiable op: the gradient is the same product of the incoming
// gradient (the mask and scale are fixed), so the backward pass applies this function again,
// which also serves double backward.
struct Product : public torch::autograd::Function<Product> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& words, const c10::intrusive_ptr<Plan>& plan) {
    at::Tensor out = plain_product(*plan, x, words);
    ctx->save_for_backward({words});
    ctx->saved_data["plan"] = plan->id;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor words = ctx->get_saved_variables()[0];
    const c10::intrusive_ptr<Plan> plan = enrolled(ctx->saved_data["plan"].toInt());
    const at::Tensor grad = in_layout(*plan, grads[0]);
    at::Tensor out;
    if (at::GradMode::is_enabled() && grad.requires_grad()) {
      out = Product::apply(grad, words, plan);
    } else {
      out = plain_product(*plan, grad, words);
    }
    return {out, at::Tensor(), at::Tensor()};
  }
};

// The key of structdrop_tutorial.torch._triton._mix (splitmix64's finalizer, bit 62 set).
uint64_t mix(uint64_t seed, uint64_t offset) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (offset + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return ((z ^ (z >> 31)) & ((1ULL << 62) - 1)) | (1ULL << 62);
}

// The key _triton.host_key makes from gen (advancing its offset by 4), or false where the
// generator has no Philox offset (nothing is changed then).
bool host_key(at::Generator& gen, uint64_t* key) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  uint64_t seed = 0, offset = 0;
  try {
    seed = gen.current_seed();
    offset = gen.get_offset();
  } catch (const c10::Error&) {
    return false;
  }
  gen.set_offset(offset + 4);
  *key = mix(seed, offset);
  return true;
}

// The words of the mask for key, from the plan's mask kernel.
at::Tensor mask_words(Plan& p, const at::Tensor& x, uint64_t key, uint64_t scratch,
                      uint64_t acc) {
  at::Tensor words = at::empty({p.rows + 1}, x.options().dtype(at::kLong));
  const int index[4] = {p.mask_words, p.mask_scratch, p.mask_acc, p.mask_key};
  const uint64_t value[4] = {address(words), scratch, acc, key};
  run(p, p.mask, current_stream(p), index, value, 4);
  return words;
}

// DropBlock of x through the plan, or an undefined tensor where the plan cannot take this call
// (x not 16-byte aligned, a generator without an offset): the caller takes the Python path.
at::Tensor call(const c10::intrusive_ptr<Plan>& plan, const at::Tensor& x, at::Generator gen,
                uint64_t scratch, uint64_t acc) {
  if (address(x) & 15) return at::Tensor();
  uint64_t key = 0;
  if (!host_key(gen, &key)) return at::Tensor();
  at::Tensor words = mask_words(*plan, x, key, scratch, acc);
  return Product::apply(x, words, plan);
}

// The same with a given key (tests compare it with the Python plan's launches).
at::Tensor call_key(const c10::intrusive_ptr<Plan>& plan, const at::Tensor& x, uint64_t key,
                    uint64_t scratch, uint64_t acc) {
  TORCH_CHECK((address(x) & 15) == 0, "x must be 16-byte aligned");
  at::Tensor words = mask_words(*plan, x, key, scratch, acc);
  return Product::apply(x, words, plan);
}

Kernel make_kernel(uint64_t fn, const std::vector<int64_t>& grid, int64_t threads,
                   int64_t shared, const std::vector<uint64_t>& slots) {
  TORCH_CHECK(grid.size() == 3, "grid must have 3 entries");
  TORCH_CHECK(slots.size() <= kMaxParams, "at most ", kMaxParams, " kernel parameters");
  Kernel k;
  k.fn = reinterpret_cast<void*>(static_cast<uintptr_t>(fn));
  for (int i = 0; i < 3; ++i) k.grid[i] = static_cast<unsigned>(grid[i]);
  k.threads = static_cast<unsigned>(threads);
  k.shared = static_cast<unsigned>(shared);
  k.slots = slots;
  return k;
}

int slot(const std::vector<int64_t>& where, size_t i, size_t count) {
  TORCH_CHECK(where.size() > i && where[i] >= 0 && static_cast<size_t>(where[i]) < count,
              "dynamic parameter ", i, " has no slot");
  return static_cast<int>(where[i]);
}

c10::intrusive_ptr<Plan> make_plan(std::vector<uint64_t> driver, bool cuda, int64_t device, int64_t rows,
                                   std::vector<int64_t> strides, uint64_t mask_fn,
                                   std::vector<int64_t> mask_grid, int64_t mask_threads,
                                   int64_t mask_shared, std::vector<uint64_t> mask_slots,
                                   std::vector<int64_t> mask_dynamic, uint64_t prod_fn,
                                   std::vector<int64_t> prod_grid, int64_t prod_threads,
                                   int64_t prod_shared, std::vector<uint64_t> prod_slots,
                                   std::vector<int64_t> prod_dynamic) {
  auto p = c10::make_intrusive<Plan>();
  TORCH_CHECK(driver.size() == 1 || driver.size() == 4,
              "driver: the address of cuLaunchKernel, then optionally those of cuCtxGetCurrent "
              "and cuCtxSetCurrent and the primary context");
  p->launch = reinterpret_cast<LaunchFn>(static_cast<uintptr_t>(driver[0]));
  if (driver.size() == 4) {
    p->ctx_get = reinterpret_cast<CtxGetFn>(static_cast<uintptr_t>(driver[1]));
    p->ctx_set = reinterpret_cast<CtxSetFn>(static_cast<uintptr_t>(driver[2]));
    p->ctx = reinterpret_cast<void*>(static_cast<uintptr_t>(driver[3]));
  }
  p->cuda = cuda;
  p->device = device;
  p->rows = rows;
  p->strides = std::move(strides);
  p->mask = make_kernel(mask_fn, mask_grid, mask_threads, mask_shared, mask_slots);
  p->prod = make_kernel(prod_fn, prod_grid, prod_threads, prod_shared, prod_slots);
  p->mask_words = slot(mask_dynamic, 0, mask_slots.size());
  p->mask_scratch = slot(mask_dynamic, 1, mask_slots.size());
  p->mask_acc = slot(mask_dynamic, 2, mask_slots.size());
  p->mask_key = slot(mask_dynamic, 3, mask_slots.size());
  p->prod_x = slot(prod_dynamic, 0, prod_slots.size());
  p->prod_words = slot(prod_dynamic, 1, prod_slots.size());
  p->prod_out = slot(prod_dynamic, 2, prod_slots.size());
  p->id = enrol(p);
  return p;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Plan, c10::intrusive_ptr<Plan>>(m, "Plan")
      .def_property_readonly("launches", [](const Plan& p) { return p.launches.load(); });
  m.def("make_plan", &make_plan);
  m.def("call", &call, pybind11::arg("plan"), pybind11::arg("x"), pybind11::arg("generator"),
        pybind11::arg("scratch"), pybind11::arg("acc"));
  m.def("call_key", &call_key);
  m.def("mix", &mix);
}
