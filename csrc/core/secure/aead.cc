#include "splitlink/secure/aead.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>

#include "../platform/evp.h"
#include "splitlink/errors.h"

namespace splitlink::secure {
namespace {

const EVP_CIPHER* evp_for(Cipher c) {
  switch (c) {
    case Cipher::kAes256Gcm:
      return openssl::fetch_cipher("AES-256-GCM");
    case Cipher::kChaCha20Poly1305:
      return openssl::fetch_cipher("ChaCha20-Poly1305");
  }
  SL_FAIL(CryptoError, "unknown cipher " << static_cast<uint32_t>(c));
}

constexpr size_t kMaxUpdate = size_t{1} << 30;  // EVP lengths are int

}  // namespace

const char* cipher_name(Cipher c) {
  switch (c) {
    case Cipher::kAes256Gcm:
      return "aes-256-gcm";
    case Cipher::kChaCha20Poly1305:
      return "chacha20-poly1305";
  }
  return "unknown";
}

SecretKey::SecretKey(const uint8_t* data, size_t len) {
  SL_CHECK(len == kKeyBytes, InvalidArgument, "a key is " << kKeyBytes << " bytes, got " << len);
  std::memcpy(bytes_.data(), data, kKeyBytes);
}

SecretKey::~SecretKey() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

bool SecretKey::equals(const SecretKey& o) const {
  return CRYPTO_memcmp(bytes_.data(), o.bytes_.data(), kKeyBytes) == 0;
}

void aead_seal_spans(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
                     const Span* spans, size_t count, uint8_t* out, uint8_t* tag) {
  auto ctx = openssl::new_ctx();
  int outl = 0;
  SL_CHECK(EVP_EncryptInit_ex2(ctx.get(), evp_for(c), key.data(), nonce, nullptr) == 1, CryptoError,
           "EVP_EncryptInit_ex2 failed: " << openssl::openssl_error());
  if (aad_len != 0) {
    SL_CHECK(aad_len <= kMaxUpdate && EVP_EncryptUpdate(ctx.get(), nullptr, &outl, aad, static_cast<int>(aad_len)) == 1,
             CryptoError, "AEAD associated data failed: " << openssl::openssl_error());
  }
  size_t pos = 0;
  for (size_t k = 0; k < count; ++k) {
    for (size_t off = 0; off < spans[k].len; off += kMaxUpdate) {
      const int n = static_cast<int>(std::min(kMaxUpdate, spans[k].len - off));
      SL_CHECK(EVP_EncryptUpdate(ctx.get(), out + pos, &outl, spans[k].src + off, n) == 1 && outl == n, CryptoError,
               "EVP_EncryptUpdate failed: " << openssl::openssl_error());
      pos += static_cast<size_t>(n);
    }
  }
  SL_CHECK(EVP_EncryptFinal_ex(ctx.get(), out + pos, &outl) == 1, CryptoError,
           "EVP_EncryptFinal_ex failed: " << openssl::openssl_error());
  SL_CHECK(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kTagBytes), tag) == 1, CryptoError,
           "reading the AEAD tag failed: " << openssl::openssl_error());
}

void aead_seal(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
               const uint8_t* in, size_t len, uint8_t* out, uint8_t* tag) {
  const Span span{in, len};
  aead_seal_spans(c, key, nonce, aad, aad_len, &span, 1, out, tag);
}

bool aead_open(Cipher c, const SecretKey& key, const uint8_t* nonce, const uint8_t* aad, size_t aad_len,
               const uint8_t* in, size_t len, uint8_t* out, const uint8_t* tag) {
  auto ctx = openssl::new_ctx();
  int outl = 0;
  SL_CHECK(EVP_DecryptInit_ex2(ctx.get(), evp_for(c), key.data(), nonce, nullptr) == 1, CryptoError,
           "EVP_DecryptInit_ex2 failed: " << openssl::openssl_error());
  SL_CHECK(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kTagBytes),
                               const_cast<uint8_t*>(tag)) == 1,
           CryptoError, "setting the AEAD tag failed: " << openssl::openssl_error());
  if (aad_len != 0) {
    if (aad_len > kMaxUpdate || EVP_DecryptUpdate(ctx.get(), nullptr, &outl, aad, static_cast<int>(aad_len)) != 1) {
      ERR_clear_error();
      return false;
    }
  }
  for (size_t off = 0; off < len; off += kMaxUpdate) {
    const int n = static_cast<int>(std::min(kMaxUpdate, len - off));
    if (EVP_DecryptUpdate(ctx.get(), out + off, &outl, in + off, n) != 1) {
      ERR_clear_error();
      return false;
    }
  }
  const bool ok = EVP_DecryptFinal_ex(ctx.get(), out + len, &outl) == 1;
  ERR_clear_error();
  return ok;
}

void require_cipher(Cipher c) { (void)evp_for(c); }

}  // namespace splitlink::secure
