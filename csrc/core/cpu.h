// Run-time CPU feature checks. The wheel is built for baseline x86-64; hot loops have AVX2/F16C
// variants compiled with target attributes and chosen here once.
#pragma once

namespace splitlink::cpu {

bool has_avx2();  // AVX2 with OS support for YMM state
bool has_f16c();  // F16C + AVX with OS support for YMM state
bool has_aesni();  // AES-NI and PCLMULQDQ (fast AES-GCM)

}  // namespace splitlink::cpu
