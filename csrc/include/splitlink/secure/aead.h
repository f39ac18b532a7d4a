// Authenticated encryption (OpenSSL 3 EVP): AES-256-GCM and ChaCha20-Poly1305 over one message,
// and keys that are wiped when freed. The sealed-frame format built on them is in sealed.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "splitlink/buffer.h"

namespace splitlink::secure {

enum class Cipher : uint32_t { kAes256Gcm = 1, kChaCha20Poly1305 = 2 };
const char* cipher_name(Cipher c);

constexpr size_t kKeyBytes = 32;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

// 32 secret bytes; wiped (OPENSSL_cleanse) on destruction; never printed.
class SecretKey {
 public:
  SecretKey() { bytes_.fill(0); }
  explicit SecretKey(const uint8_t* data, size_t len);
  ~SecretKey();
  SecretKey(const SecretKey& o) : bytes_(o.bytes_) {}
  SecretKey& operator=(const SecretKey& o) {
    bytes_ = o.bytes_;
    return *this;
  }
  const uint8_t* data() const { return bytes_.data(); }
  uint8_t* mutable_data() { return bytes_.data(); }
  bool equals(const SecretKey& o) const;  // constant time

 private:
  std::array<uint8_t, kKeyBytes> bytes_;
};

// One message whose plaintext is the concatenation of `spans`, encrypted into out[0, total).
// Lets a writer encrypt straight from tensor memory without first copying it into the frame.
void aead_seal_spans(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
                     const Span* spans, size_t count, uint8_t* out, uint8_t* tag);

// Raw AEAD primitive (one message). `in` and `out` may be the same buffer.
void aead_seal(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
               const uint8_t* in, size_t len, uint8_t* out, uint8_t* tag);
// Returns false when authentication fails (out then holds garbage the caller must discard).
bool aead_open(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
               const uint8_t* in, size_t len, uint8_t* out, const uint8_t* tag);

// Throws CryptoError when the linked OpenSSL lacks `c`: lets a user of the primitives fail at
// setup rather than on the first message.
void require_cipher(Cipher c);

}  // namespace splitlink::secure
