// libFuzzer target: opening arbitrary bytes as a sealed frame must fail cleanly (CryptoError) or
// succeed, never crash or touch memory outside the input and the output buffer.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const splitlink::secure::SecretKey key;
  splitlink::secure::Opener opener(splitlink::secure::Cipher::kAes256Gcm, key, "leader");
  std::vector<uint8_t> out(size);
  try {
    opener.open(data, size, out.data(), out.size(), 1);
  } catch (const splitlink::CryptoError&) {
  } catch (const splitlink::InvalidArgument&) {
  }
  return 0;
}
