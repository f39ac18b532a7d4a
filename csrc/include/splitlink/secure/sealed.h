// The sealed-frame format: a plain frame encrypted with the AEAD primitives of aead.h, and the
// Sealer / Opener that write and read it (nonce discipline, replay and reorder refusal).
//
// A sealed frame (protobuf message splitlink.v1.SealedFrame) carries the routing fields in clear
// (authenticated as associated data), one 16-byte tag per segment, then the ciphertext of a whole
// plain frame, cut into segments of `segment_size` bytes that are sealed independently:
//
//   nonce(seq, i) = u64 seq || u32 i                        (little-endian; 12 bytes)
//   aad(i)        = "splitlink-sealed-v1" || cipher || segment_size || plaintext_length || seq
//                   || step || len(sender) || sender || len(kind) || kind || i || segment_count
//
// Binding the index and the count into every segment means segments cannot be dropped,
// reordered or spliced between frames; binding seq into the nonce means a nonce never repeats
// under a key as long as seq increases (the Sealer enforces it; keys are per session and per
// direction, see kx.h). Segments are sealed and opened on several threads, and a receiver can
// open segment i as soon as it has arrived (tags come before the ciphertext).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "splitlink/buffer.h"
#include "splitlink/secure/aead.h"
#include "splitlink/wire/frame.h"

namespace splitlink::secure {

constexpr uint32_t kSealedVersion = 1;
constexpr uint32_t kDefaultSegment = 1u << 20;
constexpr uint32_t kMinSegment = 4096;
constexpr uint32_t kMaxSegment = 64u << 20;

namespace sealed_field {
constexpr uint32_t kSender = 2, kSeq = 3, kStep = 4, kKind = 5, kCipher = 6, kSegmentSize = 7, kPlaintextLength = 8,
                   kTags = 9, kSealedVersion = 10, kPadding = 14, kCiphertext = 15;
}

struct SealedHeader {
  wire::FrameMeta meta;  // routing fields (meta.version unused)
  Cipher cipher = Cipher::kAes256Gcm;
  uint32_t segment_size = kDefaultSegment;
  uint64_t plaintext_length = 0;
  uint64_t tags_offset = 0;        // in the sealed buffer
  uint64_t ciphertext_offset = 0;  // in the sealed buffer (64-byte aligned for our encoder)
  uint64_t segments() const;
};

// Layout of a sealed frame of `plaintext_length` bytes: total size and where the ciphertext goes.
struct SealedLayout {
  size_t header_size = 0;  // bytes before the tags content
  size_t tags_offset = 0;
  size_t ciphertext_offset = 0;
  size_t total = 0;
  uint64_t segments = 0;
};
SealedLayout plan_sealed(const wire::FrameMeta& meta, Cipher c, uint32_t segment_size, uint64_t plaintext_length);
// Writes the sealed header fields and the ciphertext field header (not the tags or ciphertext).
void write_sealed_header(const SealedLayout& L, const wire::FrameMeta& meta, Cipher c, uint32_t segment_size,
                         uint64_t plaintext_length, uint8_t* out);

// Parses and validates a sealed frame's header. WireError for malformed input, naming the byte.
// Every byte of a sealed frame is authenticated (tags, ciphertext, and the field values through
// the associated data) or framing (tags, lengths, padding); framing is not authenticated, so the
// parser accepts exactly the layout write_sealed_header produces: unknown fields, repeated fields,
// fields out of order, non-minimal varints and any other padding are refused.
SealedHeader decode_sealed_header(const uint8_t* data, size_t size);
// True when `data` looks like a sealed frame (has the sealed-version field): for error messages.
bool looks_sealed(const uint8_t* data, size_t size);

// Seals frames from one sender under one key; refuses to reuse a seq (nonce reuse).
class Sealer {
 public:
  Sealer(Cipher c, const SecretKey& key, std::string sender, uint32_t segment_size = kDefaultSegment);

  Cipher cipher() const { return cipher_; }
  uint32_t segment_size() const { return segment_size_; }
  const std::string& sender() const { return sender_; }

  // Reserves `seq` (must exceed every seq sealed so far). Throws CryptoError otherwise.
  void claim(uint64_t seq);
  // Encrypts the plaintext into out[ciphertext_offset, +plaintext) and writes the tags. The
  // header must already be written (write_sealed_header). The plaintext is `plain` when non-null;
  // otherwise `spans(begin, end, list)` lists where the bytes of [begin, end) live (pointers into
  // the caller's tensors, or into the ciphertext region itself for bytes written in place).
  using SpanFn = std::function<void(uint64_t begin, uint64_t end, std::vector<Span>& out)>;
  void seal_segments(const SealedLayout& L, const wire::FrameMeta& meta, uint64_t plaintext_length, uint8_t* out,
                     const uint8_t* plain, unsigned threads, const SpanFn& spans = nullptr) const;

 private:
  Cipher cipher_;
  SecretKey key_;
  std::string sender_;
  uint32_t segment_size_;
  std::mutex mu_;
  bool any_ = false;
  uint64_t last_seq_ = 0;
};

// Opens frames from one peer under one key; rejects replays and reordering.
class Opener {
 public:
  Opener(Cipher c, const SecretKey& key, std::string peer);

  const std::string& peer() const { return peer_; }
  // Validates, checks seq, decrypts every segment into out[0, plaintext_length) and only then
  // accepts the seq. CryptoError names sender and seq on any failure.
  SealedHeader open(const uint8_t* data, size_t size, uint8_t* out, size_t out_size, unsigned threads);
  uint64_t last_seq() const { return last_seq_; }

 private:
  Cipher cipher_;
  SecretKey key_;
  std::string peer_;
  std::mutex mu_;
  bool any_ = false;
  uint64_t last_seq_ = 0;
};

}  // namespace splitlink::secure
