#include "splitlink/secure/sealed.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

#include "../wire/pbio.h"
#include "../wire/strings.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace splitlink::secure {
namespace {

void put_u32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& v, uint64_t x) {
  for (int i = 0; i < 8; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

std::vector<uint8_t> aad_prefix(const wire::FrameMeta& m, Cipher c, uint32_t segment_size, uint64_t plaintext_length) {
  static const char kLabel[] = "splitlink-sealed-v1";
  std::vector<uint8_t> a(kLabel, kLabel + sizeof(kLabel) - 1);
  put_u32(a, static_cast<uint32_t>(c));
  put_u32(a, segment_size);
  put_u64(a, plaintext_length);
  put_u64(a, m.seq);
  put_u64(a, static_cast<uint64_t>(m.step));
  put_u32(a, static_cast<uint32_t>(m.sender.size()));
  a.insert(a.end(), m.sender.begin(), m.sender.end());
  put_u32(a, static_cast<uint32_t>(m.kind.size()));
  a.insert(a.end(), m.kind.begin(), m.kind.end());
  return a;
}

void nonce_for(uint64_t seq, uint32_t index, uint8_t* nonce) {
  for (int i = 0; i < 8; ++i) nonce[i] = static_cast<uint8_t>(seq >> (8 * i));
  for (int i = 0; i < 4; ++i) nonce[8 + i] = static_cast<uint8_t>(index >> (8 * i));
}

uint64_t segment_count(uint64_t plaintext_length, uint32_t segment_size) {
  return std::max<uint64_t>(1, (plaintext_length + segment_size - 1) / segment_size);
}

void check_segment_size(uint32_t s) {
  SL_CHECK(s >= kMinSegment && s <= kMaxSegment, InvalidArgument,
           "segment_size must be in " << kMinSegment << ".." << kMaxSegment << " bytes, got " << s);
}

}  // namespace

uint64_t SealedHeader::segments() const { return segment_count(plaintext_length, segment_size); }

SealedLayout plan_sealed(const wire::FrameMeta& meta, Cipher c, uint32_t segment_size, uint64_t plaintext_length) {
  check_segment_size(segment_size);
  SL_CHECK(meta.sender.size() <= wire::kMaxStringBytes && meta.kind.size() <= wire::kMaxStringBytes, InvalidArgument,
           "sender and kind are limited to " << wire::kMaxStringBytes << " bytes");
  SealedLayout L;
  L.segments = segment_count(plaintext_length, segment_size);
  SL_CHECK(L.segments <= 0xFFFFFFFFull, InvalidArgument, "frame too large for segment_size " << segment_size);
  namespace f = sealed_field;
  size_t h = 0;
  h += pb::tag_size(f::kSealedVersion) + pb::varint_size(kSealedVersion);
  h += pb::len_field_size(f::kSender, meta.sender.size());
  h += pb::tag_size(f::kSeq) + pb::varint_size(meta.seq);
  h += pb::tag_size(f::kStep) + pb::varint_size(static_cast<uint64_t>(meta.step));
  h += pb::len_field_size(f::kKind, meta.kind.size());
  h += pb::tag_size(f::kCipher) + pb::varint_size(static_cast<uint32_t>(c));
  h += pb::tag_size(f::kSegmentSize) + pb::varint_size(segment_size);
  h += pb::tag_size(f::kPlaintextLength) + pb::varint_size(plaintext_length);
  const uint64_t tags_len = L.segments * kTagBytes;
  L.header_size = h;
  L.tags_offset = h + pb::tag_size(f::kTags) + pb::varint_size(tags_len);
  const size_t fixed = L.tags_offset + tags_len + 2 + 1 + pb::varint_size(plaintext_length);
  const size_t pad = (wire::kAlignment - fixed % wire::kAlignment) % wire::kAlignment;
  L.ciphertext_offset = fixed + pad;
  L.total = L.ciphertext_offset + plaintext_length;
  return L;
}

void write_sealed_header(const SealedLayout& L, const wire::FrameMeta& meta, Cipher c, uint32_t segment_size,
                         uint64_t plaintext_length, uint8_t* out) {
  namespace f = sealed_field;
  uint8_t* p = out;
  p = pb::put_varint_field(p, f::kSealedVersion, kSealedVersion);
  p = pb::put_bytes_field(p, f::kSender, meta.sender);
  p = pb::put_varint_field(p, f::kSeq, meta.seq);
  p = pb::put_varint_field(p, f::kStep, static_cast<uint64_t>(meta.step));
  p = pb::put_bytes_field(p, f::kKind, meta.kind);
  p = pb::put_varint_field(p, f::kCipher, static_cast<uint32_t>(c));
  p = pb::put_varint_field(p, f::kSegmentSize, segment_size);
  p = pb::put_varint_field(p, f::kPlaintextLength, plaintext_length);
  p = pb::put_len_header(p, f::kTags, L.segments * kTagBytes);
  SL_CHECK(static_cast<size_t>(p - out) == L.tags_offset, Error, "internal: sealed header size mismatch");
  p += L.segments * kTagBytes;  // tags are written by the sealer
  const size_t pad = L.ciphertext_offset - (static_cast<size_t>(p - out) + 2 + 1 + pb::varint_size(plaintext_length));
  p = pb::put_len_header(p, f::kPadding, pad);
  std::memset(p, 0, pad);
  p += pad;
  p = pb::put_len_header(p, f::kCiphertext, plaintext_length);
  SL_CHECK(static_cast<size_t>(p - out) == L.ciphertext_offset, Error, "internal: sealed layout mismatch");
}

bool looks_sealed(const uint8_t* data, size_t size) {
  try {
    pb::Reader r(data, 0, size);
    while (!r.done()) {
      const uint64_t tag = r.varint("tag");
      if ((tag >> 3) == sealed_field::kSealedVersion && (tag & 7) == pb::kVarint) return true;
      r.skip(static_cast<pb::WireType>(tag & 7), static_cast<uint32_t>(tag >> 3), r.pos());
    }
  } catch (const WireError&) {
  }
  return false;
}

namespace {

// The name of each SealedFrame field, nullptr for numbers the format does not have.
const char* sealed_field_name(uint32_t fnum) {
  namespace f = sealed_field;
  switch (fnum) {
    case f::kSender:
      return "sender";
    case f::kSeq:
      return "seq";
    case f::kStep:
      return "step";
    case f::kKind:
      return "kind";
    case f::kCipher:
      return "cipher";
    case f::kSegmentSize:
      return "segment_size";
    case f::kPlaintextLength:
      return "plaintext_length";
    case f::kTags:
      return "tags";
    case f::kSealedVersion:
      return "sealed_version";
    case f::kPadding:
      return "padding";
    case f::kCiphertext:
      return "ciphertext";
    default:
      return nullptr;
  }
}

std::string hex_byte(uint8_t b) {
  static const char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

// Every byte of a sealed frame is either authenticated by the AEAD (the tags and the ciphertext;
// the field values through the associated data) or framing: tags, lengths, padding. The framing
// is not authenticated, so it is accepted only as this build's encoder writes it, byte for byte:
// re-encodes the header from the decoded values and compares everything outside the tags.
void check_canonical(const uint8_t* data, size_t size, const SealedHeader& h) {
  SealedLayout L;
  try {
    L = plan_sealed(h.meta, h.cipher, h.segment_size, h.plaintext_length);
  } catch (const InvalidArgument& e) {
    SL_FAIL(WireError, "sealed frame header cannot be re-encoded: " << e.what());
  }
  std::vector<uint8_t> canon(L.ciphertext_offset);
  write_sealed_header(L, h.meta, h.cipher, h.segment_size, h.plaintext_length, canon.data());
  const size_t tags_end = L.tags_offset + L.segments * kTagBytes;
  const size_t n = std::min(L.ciphertext_offset, size);
  for (size_t i = 0; i < n; ++i) {
    if (i == L.tags_offset) i = tags_end;  // tags are authenticated by the AEAD itself
    if (i >= n) break;
    SL_CHECK(data[i] == canon[i], WireError,
             "sealed frame byte " << i << " is " << hex_byte(data[i])
                                  << " where splitlink's encoding of this header has " << hex_byte(canon[i])
                                  << ": the framing outside the tags and ciphertext is not authenticated, so only "
                                     "the exact layout the Sealer writes is accepted (fields in order, minimal "
                                     "varints, zero padding up to a 64-byte aligned ciphertext)");
  }
  SL_CHECK(L.total == size && L.ciphertext_offset == h.ciphertext_offset && L.tags_offset == h.tags_offset, WireError,
           "sealed frame is " << size << " bytes with its ciphertext at byte " << h.ciphertext_offset
                              << "; the layout for this header is " << L.total << " bytes with the ciphertext at byte "
                              << L.ciphertext_offset);
}

}  // namespace

SealedHeader decode_sealed_header(const uint8_t* data, size_t size) {
  namespace f = sealed_field;
  SealedHeader h;
  uint64_t version = 0, cipher = 0, segment_size = 0, tags_len = 0, ct_len = 0;
  bool have_ct = false, have_tags = false;
  constexpr size_t kNotSeen = static_cast<size_t>(-1);
  size_t first_at[f::kCiphertext + 1];
  std::fill(std::begin(first_at), std::end(first_at), kNotSeen);
  pb::Reader r(data, 0, size);
  SL_CHECK(size > 0, WireError, "empty sealed frame");
  while (!r.done()) {
    const size_t at = r.pos();
    uint32_t wt = 0;
    const uint32_t fnum = r.field_tag(&wt);
    // Unknown and repeated fields are refused, not skipped: a skipped field or a second copy that
    // replaces the first would be bytes that change without anyone noticing.
    const char* name = sealed_field_name(fnum);
    SL_CHECK(name != nullptr, WireError,
             "sealed frame has unknown field " << fnum << " (wire type " << wt << ") at byte " << at
                                               << "; a sealed frame carries only the fields of SealedFrame version "
                                               << kSealedVersion
                                               << " (corrupt frame, or a different splitlink release)");
    SL_CHECK(first_at[fnum] == kNotSeen, WireError,
             "sealed frame repeats field '" << name << "' (" << fnum << ") at byte " << at
                                            << "; it first appeared at byte " << first_at[fnum]);
    first_at[fnum] = at;
    const bool len_field =
        fnum == f::kSender || fnum == f::kKind || fnum == f::kTags || fnum == f::kCiphertext || fnum == f::kPadding;
    const pb::WireType want = len_field ? pb::kLen : pb::kVarint;
    SL_CHECK(wt == want, WireError,
             "sealed frame field '" << name << "' (" << fnum << ") at byte " << at << " has the wrong wire type " << wt
                                    << ", expected " << want);
    switch (fnum) {
      case f::kSealedVersion:
        version = r.varint("sealed_version");
        break;
      case f::kSender:
        h.meta.sender = wire::read_string(r, "sender");
        break;
      case f::kSeq:
        h.meta.seq = r.varint("seq");
        break;
      case f::kStep:
        h.meta.step = static_cast<int64_t>(r.varint("step"));
        break;
      case f::kKind:
        h.meta.kind = wire::read_string(r, "kind");
        break;
      case f::kCipher:
        cipher = r.varint("cipher");
        break;
      case f::kSegmentSize:
        segment_size = r.varint("segment_size");
        break;
      case f::kPlaintextLength:
        h.plaintext_length = r.varint("plaintext_length");
        break;
      case f::kTags: {
        auto [b, e] = r.len_delimited("tags");
        h.tags_offset = b;
        tags_len = e - b;
        have_tags = true;
        break;
      }
      case f::kPadding: {
        // Not covered by the tags, so it must be zero (check_canonical also fixes its length).
        auto [b, e] = r.len_delimited("padding");
        for (size_t i = b; i < e; ++i) {
          SL_CHECK(data[i] == 0, WireError, "sealed frame padding byte " << i << " is not zero");
        }
        break;
      }
      case f::kCiphertext: {
        auto [b, e] = r.len_delimited("ciphertext");
        h.ciphertext_offset = b;
        ct_len = e - b;
        have_ct = true;
        break;
      }
    }
  }
  SL_CHECK(version == kSealedVersion, WireError,
           (version == 0 ? std::string("not a sealed frame (no sealed_version field)")
                         : "sealed frame version " + std::to_string(version) + " is not supported (this build: 1)"));
  SL_CHECK(cipher == 1 || cipher == 2, WireError, "sealed frame names unknown cipher " << cipher);
  h.cipher = static_cast<Cipher>(cipher);
  SL_CHECK(segment_size >= kMinSegment && segment_size <= kMaxSegment, WireError,
           "sealed frame segment_size " << segment_size << " is outside " << kMinSegment << ".." << kMaxSegment);
  h.segment_size = static_cast<uint32_t>(segment_size);
  SL_CHECK(have_ct && h.ciphertext_offset + ct_len == size, WireError,
           "sealed frame must end with its ciphertext field (truncated?)");
  SL_CHECK(ct_len == h.plaintext_length, WireError,
           "sealed frame declares " << h.plaintext_length << " plaintext bytes but carries " << ct_len);
  SL_CHECK(have_tags && tags_len == h.segments() * kTagBytes, WireError,
           "sealed frame has " << tags_len << " tag bytes, expected " << h.segments() * kTagBytes);
  check_canonical(data, size, h);
  return h;
}

Sealer::Sealer(Cipher c, const SecretKey& key, std::string sender, uint32_t segment_size)
    : cipher_(c), key_(key), sender_(std::move(sender)), segment_size_(segment_size) {
  check_segment_size(segment_size);
  require_cipher(c);  // fail now, not on the first frame, if OpenSSL lacks the cipher
}

void Sealer::claim(uint64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  SL_CHECK(!any_ || seq > last_seq_, CryptoError,
           "refusing to seal seq " << seq << " for '" << sender_ << "': seq " << last_seq_
                                   << " was already sealed under this key (a repeated seq would repeat a nonce); "
                                      "sequence numbers must increase");
  any_ = true;
  last_seq_ = seq;
}

void Sealer::seal_segments(const SealedLayout& L, const wire::FrameMeta& meta, uint64_t plaintext_length, uint8_t* out,
                           const uint8_t* plain, unsigned threads, const SpanFn& spans) const {
  const std::vector<uint8_t> prefix = aad_prefix(meta, cipher_, segment_size_, plaintext_length);
  uint8_t* ct = out + L.ciphertext_offset;
  uint8_t* tags = out + L.tags_offset;
  const uint64_t n = L.segments;
  parallel_for(
      n,
      [&](size_t i) {
        const uint64_t b = i * uint64_t{segment_size_};
        const uint64_t e = std::min(plaintext_length, b + segment_size_);
        std::vector<uint8_t> aad(prefix);
        put_u32(aad, static_cast<uint32_t>(i));
        put_u32(aad, static_cast<uint32_t>(n));
        uint8_t nonce[kNonceBytes];
        nonce_for(meta.seq, static_cast<uint32_t>(i), nonce);
        std::vector<Span> list;
        if (plain != nullptr || !spans) {
          list.push_back({plain ? plain + b : ct + b, e - b});
        } else {
          spans(b, e, list);
        }
        aead_seal_spans(cipher_, key_, nonce, aad.data(), aad.size(), list.data(), list.size(), ct + b,
                        tags + i * kTagBytes);
      },
      threads);
}

Opener::Opener(Cipher c, const SecretKey& key, std::string peer) : cipher_(c), key_(key), peer_(std::move(peer)) {
  require_cipher(c);
}

SealedHeader Opener::open(const uint8_t* data, size_t size, uint8_t* out, size_t out_size, unsigned threads) {
  SealedHeader h;
  try {
    h = decode_sealed_header(data, size);
  } catch (const WireError& e) {
    SL_FAIL(CryptoError, "sealed frame from '" << peer_ << "' rejected: " << e.what());
  }
  const std::string who = "frame from '" + wire::printable(h.meta.sender) + "' seq " + std::to_string(h.meta.seq);
  SL_CHECK(h.meta.sender == peer_, CryptoError,
           who << " rejected: this channel receives only from '" << peer_ << "' (wrong key or misrouted frame)");
  SL_CHECK(h.cipher == cipher_, CryptoError,
           who << " uses " << cipher_name(h.cipher) << " but this session uses " << cipher_name(cipher_));
  {
    std::lock_guard<std::mutex> lock(mu_);
    SL_CHECK(!any_ || h.meta.seq > last_seq_, CryptoError,
             who << " rejected as a replay or out of order: last accepted seq is " << last_seq_);
  }
  SL_CHECK(out_size >= h.plaintext_length, InvalidArgument,
           "output buffer has " << out_size << " bytes, the frame needs " << h.plaintext_length);
  const std::vector<uint8_t> prefix = aad_prefix(h.meta, h.cipher, h.segment_size, h.plaintext_length);
  const uint64_t n = h.segments();
  std::atomic<uint64_t> first_bad{n};
  parallel_for(
      n,
      [&](size_t i) {
        const uint64_t b = i * uint64_t{h.segment_size};
        const uint64_t e = std::min(h.plaintext_length, b + h.segment_size);
        std::vector<uint8_t> aad(prefix);
        put_u32(aad, static_cast<uint32_t>(i));
        put_u32(aad, static_cast<uint32_t>(n));
        uint8_t nonce[kNonceBytes];
        nonce_for(h.meta.seq, static_cast<uint32_t>(i), nonce);
        if (!aead_open(cipher_, key_, nonce, aad.data(), aad.size(), data + h.ciphertext_offset + b, e - b, out + b,
                       data + h.tags_offset + i * kTagBytes)) {
          uint64_t cur = first_bad.load();
          while (i < cur && !first_bad.compare_exchange_weak(cur, i)) {
          }
        }
      },
      threads);
  if (first_bad.load() != n) {
    if (h.plaintext_length != 0) OPENSSL_cleanse(out, h.plaintext_length);  // no unauthenticated plaintext survives
    SL_FAIL(CryptoError, "authentication failed for " << who << " (segment " << first_bad.load() << " of " << n
                                                      << "): the frame was tampered with, truncated, or sealed under "
                                                         "another key");
  }
  std::lock_guard<std::mutex> lock(mu_);
  SL_CHECK(!any_ || h.meta.seq > last_seq_, CryptoError,
           who << " rejected as a replay: the same seq was accepted meanwhile");
  any_ = true;
  last_seq_ = h.meta.seq;
  return h;
}

}  // namespace splitlink::secure
