#include "splitlink/psi/ecdh.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "../platform/evp.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace splitlink::psi {
namespace {

using openssl::openssl_error;
using openssl::Pkey;
using openssl::PkeyCtx;

constexpr size_t kChunk = 128;  // ids per task: large enough to amortise the context set-up

const EVP_MD* sha256() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  SL_CHECK(md != nullptr, CryptoError, "OpenSSL has no SHA-256: " << openssl_error());
  return md;
}

// One thread's derivation context for a private key.
class Deriver {
 public:
  explicit Deriver(EVP_PKEY* key) : ctx_(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr)) {
    SL_CHECK(ctx_ && EVP_PKEY_derive_init(ctx_.get()) == 1, CryptoError,
             "X25519 derive init failed: " << openssl_error());
  }
  // false when the point is of small order (the shared value would be zero).
  bool derive(const uint8_t* u, uint8_t* out) {
    Pkey peer(EVP_PKEY_new_raw_public_key_ex(nullptr, "X25519", nullptr, u, kPointBytes));
    SL_CHECK(peer != nullptr, CryptoError, "X25519 point import failed: " << openssl_error());
    // validate_peer = 0: X25519 accepts every u; the low-order case is caught by derive itself.
    SL_CHECK(EVP_PKEY_derive_set_peer_ex(ctx_.get(), peer.get(), 0) == 1, CryptoError,
             "X25519 set peer failed: " << openssl_error());
    size_t len = kPointBytes;
    if (EVP_PKEY_derive(ctx_.get(), out, &len) != 1) {
      ERR_clear_error();
      return false;
    }
    SL_CHECK(len == kPointBytes, CryptoError, "X25519 derive returned " << len << " bytes");
    return true;
  }

 private:
  PkeyCtx ctx_;
};

}  // namespace

void hash_to_point(const uint8_t* id, size_t len, uint8_t out[kPointBytes], uint32_t counter) {
  static const char kLabel[] = "splitlink psi v1";
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  SL_CHECK(ctx != nullptr, CryptoError, "EVP_MD_CTX_new failed");
  uint8_t c[4] = {static_cast<uint8_t>(counter), static_cast<uint8_t>(counter >> 8),
                  static_cast<uint8_t>(counter >> 16), static_cast<uint8_t>(counter >> 24)};
  unsigned int n = 0;
  const bool ok = EVP_DigestInit_ex(ctx, sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, kLabel, sizeof(kLabel) - 1) == 1 && EVP_DigestUpdate(ctx, c, 4) == 1 &&
                  EVP_DigestUpdate(ctx, id, len) == 1 && EVP_DigestFinal_ex(ctx, out, &n) == 1;
  EVP_MD_CTX_free(ctx);
  SL_CHECK(ok && n == kPointBytes, CryptoError, "SHA-256 failed: " << openssl_error());
  out[31] &= 0x7f;  // X25519 ignores the top bit; clear it so the encoding is canonical
}

Blinder Blinder::generate() {
  PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "X25519", nullptr));
  SL_CHECK(ctx && EVP_PKEY_keygen_init(ctx.get()) == 1, CryptoError, "X25519 keygen init failed: " << openssl_error());
  EVP_PKEY* p = nullptr;
  SL_CHECK(EVP_PKEY_generate(ctx.get(), &p) == 1, CryptoError, "X25519 key generation failed: " << openssl_error());
  return Blinder(p);
}

Blinder::Blinder(Blinder&& o) noexcept : pkey_(std::exchange(o.pkey_, nullptr)) {}
Blinder& Blinder::operator=(Blinder&& o) noexcept {
  if (this != &o) {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_));
    pkey_ = std::exchange(o.pkey_, nullptr);
  }
  return *this;
}
Blinder::~Blinder() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }  // OpenSSL wipes the scalar

void Blinder::hash_and_blind(const uint8_t* data, const uint64_t* offsets, size_t n, uint8_t* out,
                             unsigned threads) const {
  for (size_t i = 0; i < n; ++i)
    SL_CHECK(offsets[i] <= offsets[i + 1], InvalidArgument, "id offsets must not decrease (id " << i << ")");
  EVP_PKEY* key = static_cast<EVP_PKEY*>(pkey_);
  parallel_for((n + kChunk - 1) / kChunk,
               [&](size_t c) {
                 Deriver d(key);
                 uint8_t u[kPointBytes];
                 const size_t end = std::min(n, (c + 1) * kChunk);
                 for (size_t i = c * kChunk; i < end; ++i) {
                   const uint8_t* id = data + offsets[i];
                   const size_t len = offsets[i + 1] - offsets[i];
                   for (uint32_t counter = 0;; ++counter) {
                     hash_to_point(id, len, u, counter);
                     if (d.derive(u, out + i * kPointBytes)) break;
                     SL_CHECK(counter < 64, CryptoError, "id " << i << " hashes to low-order points 64 times");
                   }
                 }
               },
               threads);
}

void Blinder::blind(const uint8_t* in, size_t n, uint8_t* out, unsigned threads) const {
  EVP_PKEY* key = static_cast<EVP_PKEY*>(pkey_);
  parallel_for((n + kChunk - 1) / kChunk,
               [&](size_t c) {
                 Deriver d(key);
                 uint8_t tmp[kPointBytes];
                 const size_t end = std::min(n, (c + 1) * kChunk);
                 for (size_t i = c * kChunk; i < end; ++i) {
                   SL_CHECK(d.derive(in + i * kPointBytes, tmp), CryptoError,
                            "point " << i << " from the peer is of small order (an invalid or malicious blinded id)");
                   std::memcpy(out + i * kPointBytes, tmp, kPointBytes);
                 }
               },
               threads);
}

double x25519_derives_per_second(double seconds) {
  PkeyCtx kctx(EVP_PKEY_CTX_new_from_name(nullptr, "X25519", nullptr));
  EVP_PKEY* raw = nullptr;
  SL_CHECK(kctx && EVP_PKEY_keygen_init(kctx.get()) == 1 && EVP_PKEY_generate(kctx.get(), &raw) == 1, CryptoError,
           "X25519 key generation failed: " << openssl_error());
  Pkey key(raw);
  Deriver d(key.get());
  uint8_t u[kPointBytes], out[kPointBytes];
  hash_to_point(reinterpret_cast<const uint8_t*>("bench"), 5, u);
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  size_t ops = 0;
  double elapsed = 0;
  do {
    for (int i = 0; i < 64; ++i) {
      SL_CHECK(d.derive(u, out), CryptoError, "X25519 derive failed");
      u[0] ^= out[0];  // a new point each time, as blinding sees
      u[31] &= 0x7f;
    }
    ops += 64;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  } while (elapsed < seconds);
  return static_cast<double>(ops) / elapsed;
}

}  // namespace splitlink::psi
