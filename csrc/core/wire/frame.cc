#include "splitlink/wire/frame.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <string>

#include "pbio.h"
#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/memcopy.h"
#include "splitlink/parallel.h"
#include "strings.h"

namespace splitlink::wire {
namespace {

// For error messages: names come from the peer, and a NUL or other control byte in one would
// cut the message short (C strings) or garble a log line.
std::string path_str(const std::vector<std::string>& path) {
  std::string s;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i != 0) s += '/';
    s += printable(path[i]);
  }
  return s.empty() ? std::string("<empty path>") : s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

// numel of `shape`, or false on overflow of int64 (the largest count any framework can index).
bool checked_numel(const std::vector<int64_t>& shape, uint64_t* numel) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  }
  *numel = n;
  return true;
}

// Every path must be unique, and no tensor may sit where another path needs a group
// ({"a": t} and {"a": {"b": u}} cannot both be in one mapping).
template <typename Err, typename GetPath>
void check_paths(size_t n, GetPath get_path, const char* where) {
  std::set<std::vector<std::string>> tensors;
  std::set<std::vector<std::string>> groups;
  for (size_t i = 0; i < n; ++i) {
    const std::vector<std::string>& p = get_path(i);
    SL_CHECK(tensors.insert(p).second, Err,
             where << "tensor #" << i << " repeats the name '" << path_str(p) << "'; names must be unique");
    for (size_t d = 1; d < p.size(); ++d) groups.emplace(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(d));
  }
  for (const auto& g : groups) {
    SL_CHECK(tensors.count(g) == 0, Err,
             where << "'" << path_str(g) << "' is both a tensor and a group of tensors; rename one of them");
  }
}

size_t codec_msg_size(const CodecSpec& c) {
  size_t s = 0;
  auto add = [&](uint32_t f, uint64_t v) {
    if (v != 0) s += pb::tag_size(f) + pb::varint_size(v);
  };
  add(field::kCodecType, static_cast<uint32_t>(c.type));
  add(field::kBitNum, c.bit_num);
  add(field::kBlockSize, c.block_size);
  add(field::kTopKCount, c.topk_count);
  add(field::kValueBits, c.value_bits);
  return s;
}

uint8_t* put_codec_fields(uint8_t* p, const CodecSpec& c) {
  auto put = [&](uint32_t f, uint64_t v) {
    if (v != 0) p = pb::put_varint_field(p, f, v);
  };
  put(field::kCodecType, static_cast<uint32_t>(c.type));
  put(field::kBitNum, c.bit_num);
  put(field::kBlockSize, c.block_size);
  put(field::kTopKCount, c.topk_count);
  put(field::kValueBits, c.value_bits);
  return p;
}

size_t varint_field_size(uint32_t f, uint64_t v) { return pb::tag_size(f) + pb::varint_size(v); }

constexpr size_t kNotSeen = std::numeric_limits<size_t>::max();

// Refuses a second occurrence of a singular field. Protobuf encoders write each singular field at
// most once, and so does splitlink; a repeated one (a second header field, a second payload, a
// second codec) means a corrupt or forged frame whose meaning would otherwise depend on which copy
// the reader keeps. `first_at` holds the byte offset of the first occurrence (kNotSeen before);
// `desc_at` is the offset of the enclosing tensor descriptor, kNotSeen for the frame's own fields.
void once(size_t* first_at, const char* name, uint32_t fnum, size_t at, size_t desc_at = kNotSeen) {
  SL_CHECK(*first_at == kNotSeen, WireError,
           "frame repeats field '"
               << name << "' (" << fnum << ") at byte " << at
               << (desc_at == kNotSeen ? std::string()
                                       : " (in the tensor descriptor at byte " + std::to_string(desc_at) + ")")
               << "; it first appeared at byte " << *first_at
               << ". A frame carries each singular field at most once (corrupt frame, or an encoder that "
                  "writes a field twice)");
  *first_at = at;
}

}  // namespace

std::string printable(std::string_view s) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F || c == '\\') {
      out += "\\x";
      out += kDigits[c >> 4];
      out += kDigits[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    size_t n;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      n = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (static_cast<size_t>(end - p) < n) return false;
    for (size_t i = 1; i < n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return false;  // overlong
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += n;
  }
  return true;
}

std::string read_string(pb::Reader& r, const char* what) {
  const size_t at = r.pos();
  auto [b, e] = r.len_delimited(what);
  SL_CHECK(e - b <= kMaxStringBytes, WireError,
           what << " at byte " << at << " is " << (e - b) << " bytes; the limit is " << kMaxStringBytes);
  std::string out(reinterpret_cast<const char*>(r.origin() + b), e - b);
  SL_CHECK(is_valid_utf8(out), WireError, what << " at byte " << at << " is not valid UTF-8");
  return out;
}

FrameLayout FrameLayout::plan(const FrameMeta& meta, const std::vector<TensorInput>& tensors) {
  SL_CHECK(meta.version == kWireVersion, InvalidArgument,
           "this build writes wire version " << kWireVersion << ", not " << meta.version);
  for (const auto* s : {&meta.sender, &meta.kind}) {
    SL_CHECK(s->size() <= kMaxStringBytes, InvalidArgument,
             (s == &meta.sender ? "sender" : "kind")
                 << " is " << s->size() << " bytes; the limit is " << kMaxStringBytes);
    SL_CHECK(is_valid_utf8(*s), InvalidArgument, (s == &meta.sender ? "sender" : "kind") << " is not valid UTF-8");
  }
  SL_CHECK(
      tensors.size() <= kMaxTensors, InvalidArgument,
      "a frame holds at most " << kMaxTensors << " tensors, got " << tensors.size() << "; split them across frames");

  FrameLayout L;
  const size_t n = tensors.size();
  L.offsets_.resize(n);
  L.encoded_lengths_.resize(n);
  L.numels_.resize(n);
  L.tensor_msg_sizes_.resize(n);
  L.codec_msg_sizes_.resize(n);
  L.shape_sizes_.resize(n);

  size_t header = 0;
  header += varint_field_size(field::kVersion, meta.version);
  header += pb::len_field_size(field::kSender, meta.sender.size());
  header += varint_field_size(field::kSeq, meta.seq);
  header += varint_field_size(field::kStep, static_cast<uint64_t>(meta.step));
  header += pb::len_field_size(field::kKind, meta.kind.size());

  uint64_t cursor = 0;
  for (size_t i = 0; i < n; ++i) {
    const TensorInput& t = tensors[i];
    const std::string name = path_str(t.path);
    SL_CHECK(!t.path.empty() && t.path.size() <= kMaxPathDepth, InvalidArgument,
             "tensor #" << i << " has a key path of depth " << t.path.size() << "; nesting must be 1.." << kMaxPathDepth
                        << " levels");
    for (const auto& part : t.path) {
      SL_CHECK(!part.empty() && part.size() <= kMaxStringBytes, InvalidArgument,
               "tensor #" << i << " ('" << name << "') has an empty or over-long key (limit " << kMaxStringBytes
                          << " bytes)");
      SL_CHECK(is_valid_utf8(part), InvalidArgument, "tensor #" << i << " has a key that is not valid UTF-8");
    }
    const size_t isz = itemsize(t.dtype);
    SL_CHECK(isz != 0, InvalidArgument,
             "tensor '" << name << "' has unsupported dtype code " << static_cast<uint32_t>(t.dtype));
    SL_CHECK(t.shape.size() <= kMaxNdim, InvalidArgument,
             "tensor '" << name << "' has " << t.shape.size() << " dimensions; the limit is " << kMaxNdim);
    uint64_t numel = 0;
    SL_CHECK(checked_numel(t.shape, &numel), InvalidArgument,
             "tensor '" << name << "' has an invalid shape " << shape_str(t.shape));
    uint64_t nbytes = 0;
    SL_CHECK(!__builtin_mul_overflow(numel, isz, &nbytes) && nbytes == t.nbytes, InvalidArgument,
             "tensor '" << name << "': shape " << shape_str(t.shape) << " of " << dtype_name(t.dtype) << " needs "
                        << numel << "x" << isz << " bytes but its buffer has " << t.nbytes);
    SL_CHECK(nbytes == 0 || t.data != nullptr, InvalidArgument, "tensor '" << name << "' has no data pointer");
    codec::validate(t.codec, t.dtype, numel, name, /*from_wire=*/false);
    SL_CHECK(t.residual == nullptr || t.codec.type == CodecType::kTopK, InvalidArgument,
             "tensor '" << name << "': error feedback needs the topk codec");

    L.encoded_lengths_[i] = codec::encoded_size(t.codec, t.dtype, numel);
    L.numels_[i] = numel;
    L.offsets_[i] = align_up(cursor, kAlignment);
    cursor = L.offsets_[i] + L.encoded_lengths_[i];

    size_t shape_sz = 0;
    for (int64_t d : t.shape) shape_sz += pb::varint_size(static_cast<uint64_t>(d));
    L.shape_sizes_[i] = shape_sz;
    L.codec_msg_sizes_[i] = codec_msg_size(t.codec);

    size_t msg = 0;
    for (const auto& part : t.path) msg += pb::len_field_size(field::kPath, part.size());
    msg += varint_field_size(field::kDType, static_cast<uint32_t>(t.dtype));
    if (!t.shape.empty()) msg += pb::len_field_size(field::kShape, shape_sz);
    msg += varint_field_size(field::kOffset, L.offsets_[i]);
    msg += varint_field_size(field::kLength, L.encoded_lengths_[i]);
    if (L.codec_msg_sizes_[i] != 0) msg += pb::len_field_size(field::kCodec, L.codec_msg_sizes_[i]);
    L.tensor_msg_sizes_[i] = msg;
    header += pb::len_field_size(field::kTensors, msg);
  }
  check_paths<InvalidArgument>(n, [&](size_t i) -> const std::vector<std::string>& { return tensors[i].path; }, "");

  L.payload_length_ = cursor;
  L.header_size_ = header;
  // [header][tag 14][len n][n pad bytes][tag 15][varint P][payload]; choose n < 64 (one-byte
  // length) so that the payload starts on a 64-byte boundary.
  const size_t fixed = header + 1 + 1 + 1 + pb::varint_size(L.payload_length_);
  L.padding_len_ = (kAlignment - fixed % kAlignment) % kAlignment;
  L.payload_offset_ = fixed + L.padding_len_;
  L.total_size_ = L.payload_offset_ + L.payload_length_;
  return L;
}

void FrameLayout::write_prefix(const FrameMeta& meta, const std::vector<TensorInput>& tensors, uint8_t* out,
                               size_t out_size, unsigned threads) const {
  SL_CHECK(out_size >= total_size_, InvalidArgument,
           "output buffer has " << out_size << " bytes but the frame needs " << total_size_);
  SL_CHECK(tensors.size() == offsets_.size(), InvalidArgument, "write() got different tensors than plan()");
  uint8_t* p = out;
  p = pb::put_varint_field(p, field::kVersion, meta.version);
  p = pb::put_bytes_field(p, field::kSender, meta.sender);
  p = pb::put_varint_field(p, field::kSeq, meta.seq);
  p = pb::put_varint_field(p, field::kStep, static_cast<uint64_t>(meta.step));
  p = pb::put_bytes_field(p, field::kKind, meta.kind);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInput& t = tensors[i];
    p = pb::put_len_header(p, field::kTensors, tensor_msg_sizes_[i]);
    for (const auto& part : t.path) p = pb::put_bytes_field(p, field::kPath, part);
    p = pb::put_varint_field(p, field::kDType, static_cast<uint32_t>(t.dtype));
    if (!t.shape.empty()) {
      p = pb::put_len_header(p, field::kShape, shape_sizes_[i]);
      for (int64_t d : t.shape) p = pb::put_varint(p, static_cast<uint64_t>(d));
    }
    p = pb::put_varint_field(p, field::kOffset, offsets_[i]);
    p = pb::put_varint_field(p, field::kLength, encoded_lengths_[i]);
    if (codec_msg_sizes_[i] != 0) {
      p = pb::put_len_header(p, field::kCodec, codec_msg_sizes_[i]);
      p = put_codec_fields(p, t.codec);
    }
  }
  p = pb::put_len_header(p, field::kPadding, padding_len_);
  std::memset(p, 0, padding_len_);
  p += padding_len_;
  p = pb::put_len_header(p, field::kPayload, payload_length_);
  SL_CHECK(static_cast<size_t>(p - out) == payload_offset_, Error,
           "internal error: header is " << (p - out) << " bytes, planned " << payload_offset_);
  // Zero the gaps (a reused buffer must not leak an older frame's bytes to the peer) and run each
  // codec straight into its slot (codecs parallelize internally).
  uint64_t cursor = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::memset(p + cursor, 0, offsets_[i] - cursor);
    cursor = offsets_[i] + encoded_lengths_[i];
    const TensorInput& t = tensors[i];
    if (!t.codec.is_none()) {
      codec::encode(t.codec, t.dtype, t.data, numels_[i], p + offsets_[i], path_str(t.path), t.residual, threads);
    }
  }
}

size_t FrameLayout::first_slot_after(uint64_t pos) const {
  if (pos <= payload_offset_) return 0;
  const uint64_t p = pos - payload_offset_;
  size_t i = static_cast<size_t>(std::upper_bound(offsets_.begin(), offsets_.end(), p) - offsets_.begin());
  return i > 0 ? i - 1 : 0;
}

void FrameLayout::write(const FrameMeta& meta, const std::vector<TensorInput>& tensors, uint8_t* out, size_t out_size,
                        unsigned threads) const {
  write_prefix(meta, tensors, out, out_size, threads);
  // Raw tensors: large ones split into page-aligned pieces spread over threads, written with
  // streaming stores (the frame goes to the network, not back through this core's cache).
  struct Piece {
    uint8_t* dst;
    const uint8_t* src;
    size_t len;
  };
  constexpr size_t kPiece = size_t{4} << 20;
  std::vector<Piece> pieces;
  uint8_t* p = out + payload_offset_;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].codec.is_none()) continue;
    const uint64_t len = encoded_lengths_[i];
    for (uint64_t b = 0; b < len; b += kPiece) {
      pieces.push_back(
          {p + offsets_[i] + b, tensors[i].data + b, static_cast<size_t>(std::min<uint64_t>(kPiece, len - b))});
    }
  }
  parallel_for(pieces.size(), [&](size_t k) { stream_copy(pieces[k].dst, pieces[k].src, pieces[k].len); }, threads);
}

namespace {

// Decoding, one helper per message of frame.proto: Frame (decode_header), Tensor
// (read_tensor_desc) and Codec (read_codec), then the checks that need a whole descriptor
// (check_tensor_desc) or every descriptor (check_slots).

void expect_wire_type(uint32_t wt, pb::WireType want, const char* name, size_t at) {
  SL_CHECK(wt == want, WireError,
           "field '" << name << "' at byte " << at << " has protobuf wire type " << wt << ", expected " << want
                     << " (not a splitlink frame, or corrupt)");
}

// message Codec, content [r.pos(), r.end()) of the descriptor at byte `desc_at`.
void read_codec(pb::Reader& c, size_t desc_at, CodecSpec* out) {
  size_t cseen[field::kValueBits + 1];
  std::fill(std::begin(cseen), std::end(cseen), kNotSeen);
  while (!c.done()) {
    const size_t cat = c.pos();
    uint32_t cwt = 0;
    const uint32_t cf = c.field_tag(&cwt);
    if (cf <= field::kValueBits) {
      static const char* const kNames[] = {
          "", "codec.type", "codec.bit_num", "codec.block_size", "codec.topk_count", "codec.value_bits"};
      once(&cseen[cf], kNames[cf], cf, cat, desc_at);
    }
    auto small = [&](const char* what) {
      expect_wire_type(cwt, pb::kVarint, what, cat);
      const uint64_t v = c.varint(what);
      SL_CHECK(v <= 0xFFFFFFFFu, WireError, what << " " << v << " at byte " << cat << " is out of range");
      return static_cast<uint32_t>(v);
    };
    if (cf == field::kCodecType) {
      const uint32_t v = small("codec.type");
      SL_CHECK(v <= codec::kMaxCodecType, WireError,
               "tensor descriptor at byte " << desc_at << " uses unknown codec type " << v
                                            << "; the sender may run a newer splitlink");
      out->type = static_cast<CodecType>(v);
    } else if (cf == field::kBitNum) {
      out->bit_num = small("codec.bit_num");
    } else if (cf == field::kValueBits) {
      out->value_bits = small("codec.value_bits");
    } else if (cf == field::kBlockSize) {
      expect_wire_type(cwt, pb::kVarint, "codec.block_size", cat);
      out->block_size = c.varint("codec.block_size");
    } else if (cf == field::kTopKCount) {
      expect_wire_type(cwt, pb::kVarint, "codec.topk_count", cat);
      out->topk_count = c.varint("codec.topk_count");
    } else {
      c.skip(static_cast<pb::WireType>(cwt), cf, cat);
    }
  }
}

// message Tensor, content data[b, e). Field-level checks only; check_tensor_desc does the rest.
TensorDesc read_tensor_desc(const uint8_t* data, size_t b, size_t e) {
  TensorDesc d;
  size_t tseen[field::kCodec + 1];
  std::fill(std::begin(tseen), std::end(tseen), kNotSeen);
  pb::Reader t(data, b, e);
  while (!t.done()) {
    const size_t tat = t.pos();
    uint32_t twt = 0;
    const uint32_t tf = t.field_tag(&twt);
    switch (tf) {
      case field::kPath: {
        expect_wire_type(twt, pb::kLen, "tensor.path", tat);
        SL_CHECK(d.path.size() < kMaxPathDepth, WireError,
                 "tensor descriptor at byte " << b << " nests deeper than " << kMaxPathDepth << " levels");
        d.path.push_back(read_string(t, "tensor.path"));
        SL_CHECK(!d.path.back().empty(), WireError, "tensor descriptor at byte " << b << " has an empty key");
        break;
      }
      case field::kDType: {
        expect_wire_type(twt, pb::kVarint, "tensor.dtype", tat);
        once(&tseen[tf], "tensor.dtype", tf, tat, b);
        const uint64_t v = t.varint("tensor.dtype");
        SL_CHECK(is_valid_dtype(v), WireError,
                 "tensor descriptor at byte " << b << " has unknown dtype " << v << " (known: 1.." << kMaxDType
                                              << "); the sender may run a newer splitlink");
        d.dtype = static_cast<DType>(v);
        break;
      }
      case field::kShape: {
        // Packed (the encoder's form) or one varint per dimension (also valid protobuf).
        auto push_dim = [&](uint64_t v) {
          SL_CHECK(d.shape.size() < kMaxNdim, WireError,
                   "tensor descriptor at byte " << b << " has more than " << kMaxNdim << " dimensions");
          SL_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), WireError,
                   "tensor descriptor at byte " << b << " has dimension " << v << ", beyond int64");
          d.shape.push_back(static_cast<int64_t>(v));
        };
        if (twt == pb::kLen) {
          auto [sb, se] = t.len_delimited("tensor.shape");
          pb::Reader s(data, sb, se);
          while (!s.done()) push_dim(s.varint("tensor.shape"));
        } else {
          expect_wire_type(twt, pb::kVarint, "tensor.shape", tat);
          push_dim(t.varint("tensor.shape"));
        }
        break;
      }
      case field::kOffset:
        expect_wire_type(twt, pb::kVarint, "tensor.offset", tat);
        once(&tseen[tf], "tensor.offset", tf, tat, b);
        d.offset = t.varint("tensor.offset");
        break;
      case field::kLength:
        expect_wire_type(twt, pb::kVarint, "tensor.length", tat);
        once(&tseen[tf], "tensor.length", tf, tat, b);
        d.length = t.varint("tensor.length");
        break;
      case field::kCodec: {
        expect_wire_type(twt, pb::kLen, "tensor.codec", tat);
        once(&tseen[tf], "tensor.codec", tf, tat, b);
        auto [cb, ce] = t.len_delimited("tensor.codec");
        pb::Reader c(data, cb, ce);
        read_codec(c, b, &d.codec);
        break;
      }
      default:
        t.skip(static_cast<pb::WireType>(twt), tf, tat);
    }
  }
  return d;
}

// Tensor #i, whose descriptor starts at byte `at`: required fields, element count, codec, length,
// alignment and bounds within the payload. Then makes d.offset relative to the frame start.
void check_tensor_desc(TensorDesc& d, size_t i, size_t at, const FrameHeader& h) {
  SL_CHECK(!d.path.empty(), WireError, "tensor #" << i << " (descriptor at byte " << at << ") has no name");
  const std::string name = path_str(d.path);
  SL_CHECK(d.dtype != DType::kUnspecified, WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") has no dtype");
  uint64_t numel = 0;
  SL_CHECK(checked_numel(d.shape, &numel), WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") has shape " << shape_str(d.shape)
                      << " whose element count overflows int64");
  d.numel = numel;
  uint64_t nbytes = 0;
  SL_CHECK(!__builtin_mul_overflow(numel, itemsize(d.dtype), &nbytes), WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") has shape " << shape_str(d.shape)
                      << " whose byte size overflows");
  codec::validate(d.codec, d.dtype, numel, name, /*from_wire=*/true);
  const uint64_t want = d.codec.is_none() ? nbytes : codec::encoded_size(d.codec, d.dtype, numel);
  SL_CHECK(d.length == want, WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") declares " << d.length << " bytes but shape "
                      << shape_str(d.shape) << " of " << dtype_name(d.dtype) << " with codec "
                      << codec::codec_name(d.codec.type) << " needs " << want);
  SL_CHECK(d.offset % kAlignment == 0, WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") starts at payload offset " << d.offset
                      << ", which is not a multiple of " << kAlignment);
  SL_CHECK(d.offset <= h.payload_length && d.length <= h.payload_length - d.offset, WireError,
           "tensor '" << name << "' (descriptor at byte " << at << ") spans payload bytes [" << d.offset << ", "
                      << d.offset << "+" << d.length << ") but the payload has " << h.payload_length
                      << " bytes (frame truncated?)");
  d.offset += h.payload_offset;
}

// No two tensors' bytes overlap, and the names form a tree (unique, no tensor that is also a group).
void check_slots(const FrameHeader& h) {
  std::vector<std::pair<uint64_t, size_t>> spans;
  spans.reserve(h.tensors.size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    if (h.tensors[i].length != 0) spans.emplace_back(h.tensors[i].offset, i);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) {
    const TensorDesc& prev = h.tensors[spans[k - 1].second];
    const TensorDesc& cur = h.tensors[spans[k].second];
    SL_CHECK(prev.offset + prev.length <= cur.offset, WireError,
             "tensors '" << path_str(prev.path) << "' and '" << path_str(cur.path) << "' overlap in the payload");
  }
  check_paths<WireError>(
      h.tensors.size(), [&](size_t i) -> const std::vector<std::string>& { return h.tensors[i].path; }, "frame: ");
}

}  // namespace

// message Frame.
FrameHeader decode_header(const uint8_t* data, size_t size) {
  SL_CHECK(data != nullptr || size == 0, InvalidArgument, "null frame buffer");
  FrameHeader h;
  h.meta.version = 0;
  bool have_payload = false;
  std::vector<size_t> desc_pos;  // byte offset of each tensor descriptor, for messages
  // Where each singular field of Frame was first seen (repeated `tensors` excepted). Unknown
  // fields are still skipped (additive schema changes stay compatible), known ones may not repeat.
  size_t seen[field::kPayload + 1];
  std::fill(std::begin(seen), std::end(seen), kNotSeen);

  pb::Reader r(data, 0, size);
  SL_CHECK(size > 0, WireError, "empty frame (0 bytes)");
  while (!r.done()) {
    const size_t at = r.pos();
    uint32_t wt = 0;
    const uint32_t fnum = r.field_tag(&wt);
    switch (fnum) {
      case field::kVersion: {
        expect_wire_type(wt, pb::kVarint, "version", at);
        once(&seen[fnum], "version", fnum, at);
        const uint64_t v = r.varint("version");
        SL_CHECK(v <= std::numeric_limits<uint32_t>::max(), WireError,
                 "version " << v << " at byte " << at << " is out of range");
        h.meta.version = static_cast<uint32_t>(v);
        break;
      }
      case field::kSender:
        expect_wire_type(wt, pb::kLen, "sender", at);
        once(&seen[fnum], "sender", fnum, at);
        h.meta.sender = read_string(r, "sender");
        break;
      case field::kSeq:
        expect_wire_type(wt, pb::kVarint, "seq", at);
        once(&seen[fnum], "seq", fnum, at);
        h.meta.seq = r.varint("seq");
        break;
      case field::kStep:
        expect_wire_type(wt, pb::kVarint, "step", at);
        once(&seen[fnum], "step", fnum, at);
        h.meta.step = static_cast<int64_t>(r.varint("step"));
        break;
      case field::kKind:
        expect_wire_type(wt, pb::kLen, "kind", at);
        once(&seen[fnum], "kind", fnum, at);
        h.meta.kind = read_string(r, "kind");
        break;
      case field::kTensors: {
        expect_wire_type(wt, pb::kLen, "tensors", at);
        SL_CHECK(h.tensors.size() < kMaxTensors, WireError,
                 "frame declares more than " << kMaxTensors << " tensors (byte " << at << ")");
        const auto [b, e] = r.len_delimited("a tensor descriptor");
        h.tensors.push_back(read_tensor_desc(data, b, e));
        desc_pos.push_back(b);
        break;
      }
      case field::kPayload: {
        expect_wire_type(wt, pb::kLen, "payload", at);
        once(&seen[fnum], "payload", fnum, at);
        auto [b, e] = r.len_delimited("payload");
        h.payload_offset = b;
        h.payload_length = e - b;
        have_payload = true;
        break;
      }
      case field::kPadding:
        expect_wire_type(wt, pb::kLen, "padding", at);
        once(&seen[fnum], "padding", fnum, at);
        (void)r.len_delimited("padding");  // content is meaningless filler
        break;
      default:
        r.skip(static_cast<pb::WireType>(wt), fnum, at);
    }
  }

  SL_CHECK(h.meta.version != 0, WireError,
           "frame has no wire version (field 1); these " << size << " bytes are not a splitlink frame");
  SL_CHECK(h.meta.version == kWireVersion, WireError,
           "frame has wire version " << h.meta.version << " but this build reads version " << kWireVersion
                                     << "; run the same splitlink release on both parties");
  // The payload field is always present (explicitly, even when empty) and always last, so a
  // frame cut at any byte, including at a field boundary, is detected.
  SL_CHECK(
      have_payload && h.payload_offset + h.payload_length == size, WireError,
      (have_payload ? "frame does not end with its payload field (field 15)" : "frame has no payload field (field 15)")
          << "; it is truncated, or was written by an encoder that omits or reorders it");

  for (size_t i = 0; i < h.tensors.size(); ++i) check_tensor_desc(h.tensors[i], i, desc_pos[i], h);
  check_slots(h);
  return h;
}

}  // namespace splitlink::wire
