#include "cpu.h"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>

#include "simd.h"
#include "splitlink/errors.h"

#ifdef SPLITLINK_SIMD_X86
#include <cpuid.h>
#endif

namespace splitlink::cpu {
namespace {

constexpr const char* kEnv = "SPLITLINK_CPU_FEATURES";
constexpr const char* kAllowed =
    "a comma-separated list of avx2, f16c, aesni (the features to keep), or native (all the CPU has) "
    "or scalar (none)";

unsigned detect() {
  unsigned m = 0;
#ifdef SPLITLINK_SIMD_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  if (((c >> 25) & 1) && ((c >> 1) & 1)) m |= kAesni;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c_bit = (c >> 29) & 1;
  if (!(osxsave && avx)) return m;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 0x6) != 0x6) return m;  // the OS does not save YMM state
  if (f16c_bit) m |= kF16c;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && ((b >> 5) & 1)) m |= kAvx2;
#endif
  return m;
}

struct FromEnv {
  unsigned mask;
  bool forced;
};

FromEnv load_env() {
  const char* env = std::getenv(kEnv);
  if (env == nullptr || *env == '\0') return {detected(), false};
  return {parse_features(env, detected()), true};
}

// Reads the variable once; an invalid value throws here and again at every later call (a
// function-local static whose initializer throws is retried), so no call runs with a guess.
const FromEnv& from_env() {
  static const FromEnv f = load_env();
  return f;
}

constexpr int kNoOverride = -1;
std::atomic<int> g_override{kNoOverride};

}  // namespace

unsigned detected() {
  static const unsigned m = detect();
  return m;
}

unsigned in_force() {
  const int o = g_override.load(std::memory_order_relaxed);
  if (o != kNoOverride) return static_cast<unsigned>(o);
  return from_env().mask;
}

bool forced() { return g_override.load(std::memory_order_relaxed) != kNoOverride || from_env().forced; }

bool has_avx2() { return (in_force() & kAvx2) != 0; }
bool has_f16c() { return (in_force() & kF16c) != 0; }
bool has_aesni() { return (in_force() & kAesni) != 0; }

std::string feature_names(unsigned mask) {
  std::string s;
  for (auto [bit, name] : {std::pair{kAvx2, "avx2"}, std::pair{kF16c, "f16c"}, std::pair{kAesni, "aesni"}}) {
    if (mask & bit) s += s.empty() ? name : std::string(",") + name;
  }
  return s.empty() ? "none" : s;
}

unsigned parse_features(std::string_view spec, unsigned available) {
  unsigned keep = 0;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string_view::npos) end = spec.size();
    std::string tok;
    for (char ch : spec.substr(start, end - start)) {
      if (!std::isspace(static_cast<unsigned char>(ch)))
        tok += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
    unsigned bit = 0;
    if (tok == "avx2") {
      bit = kAvx2;
    } else if (tok == "f16c") {
      bit = kF16c;
    } else if (tok == "aesni") {
      bit = kAesni;
    } else if (tok == "native") {
      bit = available;
    } else if (tok == "scalar" || tok == "none") {
      bit = 0;
    } else {
      SL_FAIL(InvalidArgument, kEnv << "='" << spec << "': unknown feature '" << tok << "'; allowed: " << kAllowed);
    }
    SL_CHECK((bit & ~available) == 0, InvalidArgument,
             kEnv << "='" << spec << "' asks for " << feature_names(bit & ~available)
                  << ", which this CPU lacks (it has: " << feature_names(available)
                  << "); the variable can only remove features, so drop that name or unset the variable");
    keep |= bit;
    start = end + 1;
  }
  return keep;
}

void override_features(unsigned mask) {
  SL_CHECK((mask & ~kAllFeatures) == 0, InvalidArgument, "unknown CPU feature bits " << (mask & ~kAllFeatures));
  SL_CHECK((mask & ~detected()) == 0, InvalidArgument,
           "cannot force " << feature_names(mask & ~detected())
                           << ": this CPU lacks it (it has: " << feature_names(detected()) << ")");
  g_override.store(static_cast<int>(mask), std::memory_order_relaxed);
}

void clear_override() { g_override.store(kNoOverride, std::memory_order_relaxed); }

}  // namespace splitlink::cpu
