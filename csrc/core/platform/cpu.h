// Run-time CPU feature checks. Internal to the core. The wheel is built for baseline x86-64; hot
// loops have AVX2/F16C variants compiled with target attributes (simd.h) and chosen at each call
// from the features in force.
//
// The features in force are the ones the CPU (and OS) support, limited by the environment
// variable SPLITLINK_CPU_FEATURES, read once at first use: a comma-separated list of the features
// to keep (avx2, f16c, aesni), or `native` (all the CPU has; same as unset or empty) or `scalar`
// (none: the baseline code paths). The list can only remove features: naming one the CPU lacks,
// or an unknown name, throws InvalidArgument (from the first has_*() call and every one after)
// saying what was wrong and what is allowed. Every variant gives bit-identical codec output, so
// forcing one is for testing that claim and for reproducing another machine's code path.
#pragma once

#include <string>
#include <string_view>

namespace splitlink::cpu {

// Optional features the core dispatches on, as bits of a mask.
enum Feature : unsigned {
  kAvx2 = 1u << 0,   // AVX2 with OS support for YMM state
  kF16c = 1u << 1,   // F16C + AVX with OS support for YMM state
  kAesni = 1u << 2,  // AES-NI and PCLMULQDQ (fast AES-GCM); steers the default AEAD choice only
};
constexpr unsigned kAllFeatures = kAvx2 | kF16c | kAesni;

// In force (what dispatch uses). Throw InvalidArgument if SPLITLINK_CPU_FEATURES is invalid.
bool has_avx2();
bool has_f16c();
bool has_aesni();
unsigned in_force();

// What the CPU and OS support, whatever SPLITLINK_CPU_FEATURES says. Never throws.
unsigned detected();

// Whether SPLITLINK_CPU_FEATURES (set and not empty) or override_features() chose the features
// in force. Throws like in_force() when the variable is invalid.
bool forced();

// "avx2,f16c" style names of a mask, in the order of Feature; "none" for 0.
std::string feature_names(unsigned mask);

// The mask a SPLITLINK_CPU_FEATURES value selects from `available`. Throws InvalidArgument naming
// the allowed values for an unknown name, and naming the missing feature for one not available.
unsigned parse_features(std::string_view spec, unsigned available);

// For tests: dispatch as if the CPU had only `mask`, replacing whatever SPLITLINK_CPU_FEATURES
// chose, until clear_override(). Throws InvalidArgument if mask has a feature detected() lacks.
// Not for use while other threads run codecs (they may see either set for a call).
void override_features(unsigned mask);
void clear_override();

// RAII form of override_features for tests.
class ScopedFeatures {
 public:
  explicit ScopedFeatures(unsigned mask) { override_features(mask); }
  ~ScopedFeatures() { clear_override(); }
  ScopedFeatures(const ScopedFeatures&) = delete;
  ScopedFeatures& operator=(const ScopedFeatures&) = delete;
};

}  // namespace splitlink::cpu
