// Key agreement: X25519 key pairs (OpenSSL EVP), HKDF-SHA256, and the derivation of per-direction
// session keys and pairwise mask keys.
//
//   send key of A to B = HKDF-SHA256(ikm = X25519(a, B), salt = session_id,
//                                    info = "splitlink v1 aead" || cipher || lp(A) || lp(B) || pub(A) || pub(B))
//
// (lp = 4-byte little-endian length, then bytes). The key A uses to send to B is the key B uses to
// receive from A, and differs from the key of the opposite direction, so a frame reflected back
// to its sender fails to open. Public keys travel over the mutually authenticated TLS channel, so
// the certificates authenticate them. X25519 outputs that are all zero (a peer's low-order point)
// are rejected by OpenSSL and reported as CryptoError.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "splitlink/secure/aead.h"

namespace splitlink::secure {

constexpr size_t kX25519Bytes = 32;

class X25519KeyPair {
 public:
  static X25519KeyPair generate();
  static X25519KeyPair from_private(const uint8_t* key, size_t len);

  X25519KeyPair(X25519KeyPair&&) noexcept;
  X25519KeyPair& operator=(X25519KeyPair&&) noexcept;
  ~X25519KeyPair();

  std::array<uint8_t, kX25519Bytes> public_key() const;
  SecretKey private_key() const;
  // The raw X25519 shared secret with `peer_public`.
  SecretKey exchange(const uint8_t* peer_public, size_t len) const;

 private:
  explicit X25519KeyPair(void* pkey) : pkey_(pkey) {}
  void* pkey_ = nullptr;  // EVP_PKEY*
};

void hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const uint8_t* salt, size_t salt_len, const uint8_t* info,
                 size_t info_len, uint8_t* out, size_t out_len);

struct SessionKeys {
  SecretKey send;
  SecretKey recv;
};

SessionKeys derive_session_keys(const X25519KeyPair& mine, const uint8_t* peer_public, const std::string& me,
                                const std::string& peer, const std::vector<uint8_t>& session_id, Cipher c);

// The key both parties of a pair derive for their pairwise masks (names and public keys are put
// in sorted order, so both sides compute the same bytes).
SecretKey derive_mask_key(const X25519KeyPair& mine, const uint8_t* peer_public, const std::string& me,
                          const std::string& peer, const std::vector<uint8_t>& session_id);

}  // namespace splitlink::secure
