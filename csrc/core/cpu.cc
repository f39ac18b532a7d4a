#include "cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define SPLITLINK_X86 1
#endif

namespace splitlink::cpu {
namespace {

#ifdef SPLITLINK_X86
struct Features {
  bool avx2 = false;
  bool f16c = false;
  bool aesni = false;
  Features() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    aesni = ((c >> 25) & 1) && ((c >> 1) & 1);
    const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c_bit = (c >> 29) & 1;
    if (!(osxsave && avx)) return;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6) != 0x6) return;  // the OS does not save YMM state
    f16c = f16c_bit;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) avx2 = (b >> 5) & 1;
  }
};
const Features& features() {
  static const Features f;
  return f;
}
#endif

}  // namespace

bool has_avx2() {
#ifdef SPLITLINK_X86
  return features().avx2;
#else
  return false;
#endif
}

bool has_f16c() {
#ifdef SPLITLINK_X86
  return features().f16c;
#else
  return false;
#endif
}

bool has_aesni() {
#ifdef SPLITLINK_X86
  return features().aesni;
#else
  return false;
#endif
}

}  // namespace splitlink::cpu
