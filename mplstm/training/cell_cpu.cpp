// The MP-LSTM recurrence of one direction, fused for the CPU (inference: no autograd).
//
// The equations are those of cell.py's module docstring; cell.py's recurrence() is the
// reference this kernel is tested against (tests/training/test_cell_cpu.py). Eager
// PyTorch pays a dispatcher round trip for each of the dozen small ops of a step, and
// writes and rereads every view's gates; here a step is one [B, U] x [U, 4U] GEMM and one
// pass over the batch rows. Built by `python -m mplstm.training.cell_cpu build` (make venv).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// exp(x) for float in a form gcc vectorizes (Cephes' expf: range reduction by ln 2, a
// degree-6 polynomial, 2^n built in the exponent bits; ~1 ulp). std::exp stays a scalar
// libm call without -ffast-math, which would also break the inf/nan semantics of the rest.
inline float vexp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline double vexp(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

template <typename T>
inline T keras_hard_sigmoid(T x) {
  return std::min(T(1), std::max(T(0), T(0.2) * x + T(0.5)));
}

struct Shapes {
  int64_t views, batch, steps, units;
};

// One batch row, one step: every view's gates, the memory chain, the new h. The row's
// gates (4U values) stay in L1, so nothing [P, B, 4U]-sized is written per step.
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void step_row(const Shapes s, int64_t b, int64_t t, const T* x, const T* rec, const T* bias,
              const T* peep, const bool* mask, bool hard, T* z, T* h, T* c, T* out) {
  // z: scratch of 4U + U values.
  const int64_t U = s.units, G = 4 * U;
  const T* rb = rec + b * G;
  T* cb = c + b * U;
  T* hb = h + b * U;
  std::fill(hb, hb + U, T(0));  // h holds the sum of o over the views until the end
  // Peepholes read c_{t-1} in every view's gates, while the chain below updates c.
  T* c_prev = z + G;
  if (peep != nullptr) std::copy(cb, cb + U, c_prev);
  const T* xv = x + (b * s.steps + t) * G;
  for (int64_t v = 0; v < s.views; ++v, xv += s.batch * s.steps * G) {
    // A missing view is skipped: the chain passes c on and the sum leaves it out.
    if (mask != nullptr && !mask[b * s.views + v]) continue;
    const T* bv = bias + v * G;
    for (int64_t j = 0; j < G; ++j) z[j] = xv[j] + rb[j] + bv[j];
    if (peep != nullptr) {
      for (int64_t blk = 0; blk < 4; ++blk)
        for (int64_t u = 0; u < U; ++u) z[blk * U + u] += peep[blk * U + u] * c_prev[u];
    }
    if (hard) {
      for (int64_t u = 0; u < U; ++u) {
        const T g = T(2) * sigmoid(T(2) * z[2 * U + u]) - T(1);
        cb[u] = keras_hard_sigmoid(z[U + u]) * cb[u] + keras_hard_sigmoid(z[u]) * g;
        hb[u] += keras_hard_sigmoid(z[3 * U + u]);
      }
    } else {
      for (int64_t j = 0; j < 2 * U; ++j) z[j] = sigmoid(z[j]);
      for (int64_t j = 2 * U; j < 3 * U; ++j) z[j] = T(2) * sigmoid(T(2) * z[j]) - T(1);
      for (int64_t j = 3 * U; j < G; ++j) z[j] = sigmoid(z[j]);
      for (int64_t u = 0; u < U; ++u) {
        cb[u] = z[U + u] * cb[u] + z[u] * z[2 * U + u];
        hb[u] += z[3 * U + u];
      }
    }
  }
  T* ob = out + (b * s.steps + t) * U;
  for (int64_t u = 0; u < U; ++u) {
    hb[u] *= T(2) * sigmoid(T(2) * cb[u]) - T(1);  // o_sum * tanh(c)
    ob[u] = hb[u];
  }
}

template <typename T>
void run_steps(const at::Tensor& proj, const at::Tensor& bias, const at::Tensor& weight_hh_t,
               const at::Tensor& peep, const at::Tensor& mask, const at::Tensor& lengths,
               bool reverse, bool hard, at::Tensor& out, at::Tensor& h, at::Tensor& c) {
  const Shapes s{proj.size(0), proj.size(1), proj.size(2), proj.size(3) / 4};
  const int64_t G = 4 * s.units;
  at::Tensor rec = at::empty({s.batch, G}, proj.options());
  // h is read by this step's GEMM while rows write the new one: rows write h_next.
  at::Tensor h_next = at::zeros_like(h);
  const T* x = proj.data_ptr<T>();
  const T* b_ih = bias.data_ptr<T>();
  const T* pp = peep.defined() ? peep.data_ptr<T>() : nullptr;
  const bool* m = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  const T* r = rec.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // Rows per task: under a few thousand elements a task costs more to hand out than to run.
  const int64_t grain = std::max<int64_t>(1, 8192 / (s.views * G));
  for (int64_t k = 0; k < s.steps; ++k) {
    const int64_t t = reverse ? s.steps - 1 - k : k;
    at::mm_out(rec, h, weight_hh_t);
    T* hn = h_next.data_ptr<T>();
    const T* hp = h.data_ptr<T>();
    at::parallel_for(0, s.batch, grain, [&](int64_t b0, int64_t b1) {
      std::vector<T> z(G + s.units);  // a row's gates, then c_{t-1}
      for (int64_t b = b0; b < b1; ++b) {
        if (len != nullptr && t >= len[b]) {
          // Past the sequence's end: h and c keep the last valid step's; output stays 0.
          std::copy(hp + b * s.units, hp + (b + 1) * s.units, hn + b * s.units);
          continue;
        }
        step_row<T>(s, b, t, x, r, b_ih, pp, m, hard, z.data(), hn, cp, op);
      }
    });
    std::swap(h, h_next);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrence(
    const at::Tensor& proj, const at::Tensor& bias, const at::Tensor& weight_hh_t,
    const std::optional<at::Tensor>& peep, const std::optional<at::Tensor>& view_mask,
    const std::optional<at::Tensor>& lengths, bool reverse, bool hard,
    const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& c0) {
  TORCH_CHECK(proj.dim() == 4 && proj.size(3) % 4 == 0,
              "proj must be [P, B, T, 4U], got ", proj.sizes());
  TORCH_CHECK(proj.device().is_cpu(), "the fused MP-LSTM kernel runs on the CPU only");
  const int64_t P = proj.size(0), B = proj.size(1), G = proj.size(3), U = G / 4;
  TORCH_CHECK(bias.sizes() == at::IntArrayRef({P, G}), "bias must be [P, 4U]");
  TORCH_CHECK(weight_hh_t.sizes() == at::IntArrayRef({U, G}), "weight_hh_t must be [U, 4U]");
  const auto dtype = proj.scalar_type();
  at::Tensor projc = proj.contiguous();
  at::Tensor biasc = bias.to(dtype).contiguous();
  at::Tensor whh = weight_hh_t.to(dtype);
  at::Tensor peepc, maskc, lenc;
  if (peep.has_value()) {
    TORCH_CHECK(peep->numel() == G, "peep must be [4U]");
    peepc = peep->to(dtype).contiguous();
  }
  if (view_mask.has_value()) {
    TORCH_CHECK(view_mask->sizes() == at::IntArrayRef({B, P}), "view_mask must be [B, P]");
    maskc = view_mask->to(at::kBool).contiguous();
  }
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->numel() == B, "lengths must be [B]");
    lenc = lengths->to(at::kLong).contiguous();
  }
  auto opts = proj.options();
  at::Tensor out = at::zeros({B, proj.size(2), U}, opts);
  // The initial state (ONNX LSTM's initial_h / initial_c), copied: the kernel updates it
  // in place.
  at::Tensor h = at::zeros({B, U}, opts);
  at::Tensor c = at::zeros({B, U}, opts);
  if (h0.has_value()) {
    TORCH_CHECK(h0->sizes() == at::IntArrayRef({B, U}), "h0 must be [B, U]");
    h.copy_(*h0);
  }
  if (c0.has_value()) {
    TORCH_CHECK(c0->sizes() == at::IntArrayRef({B, U}), "c0 must be [B, U]");
    c.copy_(*c0);
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "mplstm_recurrence_cpu", [&] {
    run_steps<scalar_t>(projc, biasc, whh, peepc, maskc, lenc, reverse, hard, out, h, c);
  });
  return {out, h, c};
}

}  // namespace

TORCH_LIBRARY(mplstm_cpu, lib) {
  lib.def(
      "recurrence(Tensor proj, Tensor bias, Tensor weight_hh_t, Tensor? peep, "
      "Tensor? view_mask, Tensor? lengths, bool reverse, bool hard, Tensor? h0=None, "
      "Tensor? c0=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mplstm_cpu, CPU, lib) { lib.impl("recurrence", &recurrence); }
