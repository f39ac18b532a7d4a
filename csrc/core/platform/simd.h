// The one place that decides which SIMD code the core compiles. Internal to the core.
//
// SPLITLINK_SIMD_X86 is defined on x86-64 with GCC or Clang. There SSE2 is baseline (the wheel is
// built for plain x86-64, so SSE2 code needs nothing special), and wider variants are compiled
// per function with SPLITLINK_TARGET_AVX2 / SPLITLINK_TARGET_F16C and chosen at each call from
// cpu::has_avx2() / cpu::has_f16c() (platform/cpu.h), which honour SPLITLINK_CPU_FEATURES. Elsewhere
// only the portable scalar code is built. A file with SIMD code includes this header and writes:
//
//   #ifdef SPLITLINK_SIMD_X86
//   SPLITLINK_TARGET_AVX2 void f_avx2(...) { ... }
//   #endif
//   void f(...) {
//   #ifdef SPLITLINK_SIMD_X86
//     if (cpu::has_avx2()) return f_avx2(...);
//   #endif
//     ...scalar...
//   }
#pragma once

#include "cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SPLITLINK_SIMD_X86 1
// Compiles one function for an instruction set beyond the baseline; call it only when the
// matching cpu::has_*() is true. The strings match the features cpu.h detects (kF16c needs AVX).
#define SPLITLINK_TARGET(isa) __attribute__((target(isa)))
#define SPLITLINK_TARGET_AVX2 SPLITLINK_TARGET("avx2")
#define SPLITLINK_TARGET_F16C SPLITLINK_TARGET("avx,f16c")
#endif
