// Internal entry points of each codec; codec.cc validates specs and dispatches to them.
#pragma once

#include <cstdint>
#include <string>

#include "splitlink/dtype.h"

namespace splitlink::codec::detail {

uint64_t minmax_size(uint64_t numel, unsigned bits, uint64_t block_size);
void minmax_encode(DType dt, const void* src, uint64_t numel, unsigned bits, uint64_t block_size, bool stochastic,
                   uint64_t seed, uint8_t* dst, const std::string& name, unsigned threads);
void minmax_decode(DType dt, const uint8_t* src, uint64_t numel, unsigned bits, uint64_t block_size, void* dst,
                   const std::string& name, unsigned threads);

void bitpack_encode(DType dt, const void* src, uint64_t numel, unsigned bits, uint8_t* dst, const std::string& name,
                    unsigned threads);
void bitpack_decode(DType dt, const uint8_t* src, uint64_t numel, unsigned bits, void* dst, const std::string& name,
                    unsigned threads);

// fp16 / bf16 casts of float32 or float64 tensors.
void half_encode(bool bf16, DType dt, const void* src, uint64_t numel, uint16_t* dst, unsigned threads);
void half_decode(bool bf16, DType dt, const uint16_t* src, uint64_t numel, void* dst, unsigned threads);

uint64_t topk_size(DType dt, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size);
void topk_encode(DType dt, const void* src, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size,
                 bool stochastic, uint64_t seed, uint8_t* dst, float* residual, const std::string& name,
                 unsigned threads);
void topk_decode(DType dt, const uint8_t* src, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size,
                 void* dst, const std::string& name, unsigned threads);

}  // namespace splitlink::codec::detail
