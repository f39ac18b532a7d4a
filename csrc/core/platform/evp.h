// OpenSSL helpers: RAII around EVP objects, error text, cached cipher fetches. Internal to the core.
#pragma once

#include <openssl/err.h>
#include <openssl/evp.h>

#include <memory>
#include <string>

#include "splitlink/errors.h"

namespace splitlink::openssl {

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;

// The most recent OpenSSL error as text (and clears the queue). Never includes key material:
// OpenSSL error strings name the failing function and reason only.
inline std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

inline CipherCtx new_ctx() {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  SL_CHECK(ctx != nullptr, CryptoError, "EVP_CIPHER_CTX_new failed: " << openssl_error());
  return ctx;
}

// Cipher implementations fetched once from the default provider and kept for the process
// (fetching on every init costs a provider lookup).
const EVP_CIPHER* fetch_cipher(const char* name);

}  // namespace splitlink::openssl
