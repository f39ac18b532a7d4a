#include "evp.h"

#include <map>
#include <mutex>
#include <string>

namespace splitlink::openssl {

const EVP_CIPHER* fetch_cipher(const char* name) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, EVP_CIPHER*>();  // leaked: lives as long as the process
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(name);
  if (it != cache->end()) return it->second;
  EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, name, nullptr);
  SL_CHECK(c != nullptr, CryptoError, "OpenSSL has no " << name << ": " << openssl_error());
  (*cache)[name] = c;
  return c;
}

}  // namespace splitlink::openssl
