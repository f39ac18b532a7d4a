#include "splitlink/secure/kx.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "../platform/evp.h"
#include "splitlink/errors.h"

namespace splitlink::secure {
namespace {

EVP_PKEY* as_pkey(void* p) { return static_cast<EVP_PKEY*>(p); }

void put_lp(std::vector<uint8_t>& v, const uint8_t* data, size_t len) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(len >> (8 * i)));
  v.insert(v.end(), data, data + len);
}
void put_lp(std::vector<uint8_t>& v, const std::string& s) {
  put_lp(v, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

X25519KeyPair X25519KeyPair::generate() {
  openssl::PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "X25519", nullptr));
  SL_CHECK(ctx && EVP_PKEY_keygen_init(ctx.get()) == 1, CryptoError,
           "X25519 keygen init failed: " << openssl::openssl_error());
  EVP_PKEY* p = nullptr;
  SL_CHECK(EVP_PKEY_generate(ctx.get(), &p) == 1, CryptoError,
           "X25519 key generation failed: " << openssl::openssl_error());
  return X25519KeyPair(p);
}

X25519KeyPair X25519KeyPair::from_private(const uint8_t* key, size_t len) {
  SL_CHECK(len == kX25519Bytes, InvalidArgument, "an X25519 private key is 32 bytes, got " << len);
  EVP_PKEY* p = EVP_PKEY_new_raw_private_key_ex(nullptr, "X25519", nullptr, key, len);
  SL_CHECK(p != nullptr, CryptoError, "invalid X25519 private key: " << openssl::openssl_error());
  return X25519KeyPair(p);
}

X25519KeyPair::X25519KeyPair(X25519KeyPair&& o) noexcept : pkey_(std::exchange(o.pkey_, nullptr)) {}
X25519KeyPair& X25519KeyPair::operator=(X25519KeyPair&& o) noexcept {
  if (this != &o) {
    EVP_PKEY_free(as_pkey(pkey_));
    pkey_ = std::exchange(o.pkey_, nullptr);
  }
  return *this;
}
X25519KeyPair::~X25519KeyPair() { EVP_PKEY_free(as_pkey(pkey_)); }  // OpenSSL wipes key material on free

std::array<uint8_t, kX25519Bytes> X25519KeyPair::public_key() const {
  std::array<uint8_t, kX25519Bytes> out{};
  size_t len = out.size();
  SL_CHECK(EVP_PKEY_get_raw_public_key(as_pkey(pkey_), out.data(), &len) == 1 && len == out.size(), CryptoError,
           "reading the X25519 public key failed: " << openssl::openssl_error());
  return out;
}

SecretKey X25519KeyPair::private_key() const {
  SecretKey k;
  size_t len = kX25519Bytes;
  SL_CHECK(EVP_PKEY_get_raw_private_key(as_pkey(pkey_), k.mutable_data(), &len) == 1 && len == kX25519Bytes,
           CryptoError, "reading the X25519 private key failed: " << openssl::openssl_error());
  return k;
}

SecretKey X25519KeyPair::exchange(const uint8_t* peer_public, size_t len) const {
  SL_CHECK(len == kX25519Bytes, CryptoError, "an X25519 public key is 32 bytes, got " << len);
  openssl::Pkey peer(EVP_PKEY_new_raw_public_key_ex(nullptr, "X25519", nullptr, peer_public, len));
  SL_CHECK(peer != nullptr, CryptoError, "invalid X25519 public key: " << openssl::openssl_error());
  openssl::PkeyCtx ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, as_pkey(pkey_), nullptr));
  SL_CHECK(ctx && EVP_PKEY_derive_init(ctx.get()) == 1 && EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) == 1,
           CryptoError, "X25519 derive setup failed: " << openssl::openssl_error());
  SecretKey out;
  size_t outlen = kX25519Bytes;
  // OpenSSL fails the derivation when the shared secret is all zero (a low-order peer point).
  SL_CHECK(EVP_PKEY_derive(ctx.get(), out.mutable_data(), &outlen) == 1 && outlen == kX25519Bytes, CryptoError,
           "X25519 key agreement failed (invalid or low-order peer public key): " << openssl::openssl_error());
  return out;
}

void hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const uint8_t* salt, size_t salt_len, const uint8_t* info,
                 size_t info_len, uint8_t* out, size_t out_len) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  SL_CHECK(kdf != nullptr, CryptoError, "OpenSSL has no HKDF: " << openssl::openssl_error());
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  SL_CHECK(ctx != nullptr, CryptoError, "EVP_KDF_CTX_new failed: " << openssl::openssl_error());
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm), ikm_len);
  if (salt_len != 0)
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt), salt_len);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info), info_len);
  params[n++] = OSSL_PARAM_construct_end();
  const int ok = EVP_KDF_derive(ctx, out, out_len, params);
  EVP_KDF_CTX_free(ctx);
  SL_CHECK(ok == 1, CryptoError, "HKDF-SHA256 failed: " << openssl::openssl_error());
}

namespace {

SecretKey hkdf_key(const SecretKey& ikm, const std::vector<uint8_t>& salt, const std::vector<uint8_t>& info) {
  SecretKey k;
  hkdf_sha256(ikm.data(), kKeyBytes, salt.data(), salt.size(), info.data(), info.size(), k.mutable_data(), kKeyBytes);
  return k;
}

void check_session_id(const std::vector<uint8_t>& session_id) {
  SL_CHECK(session_id.size() >= 16, InvalidArgument,
           "session_id must be at least 16 random bytes (got " << session_id.size()
                                                               << "); use a fresh one for every session");
}

}  // namespace

SessionKeys derive_session_keys(const X25519KeyPair& mine, const uint8_t* peer_public, const std::string& me,
                                const std::string& peer, const std::vector<uint8_t>& session_id, Cipher c) {
  check_session_id(session_id);
  SL_CHECK(me != peer, InvalidArgument, "a party cannot derive session keys with itself ('" << me << "')");
  const SecretKey shared = mine.exchange(peer_public, kX25519Bytes);
  const auto my_pub = mine.public_key();
  auto info = [&](const std::string& from, const std::string& to, const uint8_t* from_pub, const uint8_t* to_pub) {
    static const char kLabel[] = "splitlink v1 aead";
    std::vector<uint8_t> v(kLabel, kLabel + sizeof(kLabel) - 1);
    const uint32_t cc = static_cast<uint32_t>(c);
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(cc >> (8 * i)));
    put_lp(v, from);
    put_lp(v, to);
    put_lp(v, from_pub, kX25519Bytes);
    put_lp(v, to_pub, kX25519Bytes);
    return v;
  };
  SessionKeys keys;
  keys.send = hkdf_key(shared, session_id, info(me, peer, my_pub.data(), peer_public));
  keys.recv = hkdf_key(shared, session_id, info(peer, me, peer_public, my_pub.data()));
  return keys;
}

SecretKey derive_mask_key(const X25519KeyPair& mine, const uint8_t* peer_public, const std::string& me,
                          const std::string& peer, const std::vector<uint8_t>& session_id) {
  check_session_id(session_id);
  SL_CHECK(me != peer, InvalidArgument, "a party cannot derive a mask key with itself ('" << me << "')");
  const SecretKey shared = mine.exchange(peer_public, kX25519Bytes);
  const auto my_pub = mine.public_key();
  const bool me_first = me < peer;
  static const char kLabel[] = "splitlink v1 mask";
  std::vector<uint8_t> info(kLabel, kLabel + sizeof(kLabel) - 1);
  put_lp(info, me_first ? me : peer);
  put_lp(info, me_first ? peer : me);
  put_lp(info, me_first ? my_pub.data() : peer_public, kX25519Bytes);
  put_lp(info, me_first ? peer_public : my_pub.data(), kX25519Bytes);
  return hkdf_key(shared, session_id, info);
}

}  // namespace splitlink::secure
