// libFuzzer target: opening arbitrary bytes as a sealed frame must fail cleanly (CryptoError) or
// succeed, never crash or touch memory outside the input and the output buffer. A frame that
// opens must be byte for byte what the Sealer writes outside the tags and ciphertext (the framing
// is not authenticated, so any other layout would be a byte that changed unnoticed). The test
// suite seeds the corpus with frames sealed under this all-zero key for sender "leader", so
// mutations of valid frames are explored.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"
#include "splitlink/secure/sealed.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace sec = splitlink::secure;
  static const sec::SecretKey key;
  sec::Opener opener(sec::Cipher::kAes256Gcm, key, "leader");
  std::vector<uint8_t> out(size);
  sec::SealedHeader h;
  try {
    h = opener.open(data, size, out.data(), out.size(), 1);
  } catch (const splitlink::CryptoError&) {
    return 0;
  } catch (const splitlink::InvalidArgument&) {
    return 0;
  }
  const sec::SealedLayout L = sec::plan_sealed(h.meta, h.cipher, h.segment_size, h.plaintext_length);
  if (L.total != size || L.ciphertext_offset != h.ciphertext_offset || L.tags_offset != h.tags_offset) std::abort();
  std::vector<uint8_t> canon(L.ciphertext_offset);
  sec::write_sealed_header(L, h.meta, h.cipher, h.segment_size, h.plaintext_length, canon.data());
  const size_t tags_end = L.tags_offset + L.segments * sec::kTagBytes;
  if (std::memcmp(canon.data(), data, L.tags_offset) != 0 ||
      std::memcmp(canon.data() + tags_end, data + tags_end, L.ciphertext_offset - tags_end) != 0) {
    std::abort();
  }
  return 0;
}
