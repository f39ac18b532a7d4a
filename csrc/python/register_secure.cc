// Bindings for AEAD sealing, X25519/HKDF key agreement and additive masking.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "frame_buffer.h"
#include "py_buffer.h"
#include "register.h"
#include "sealing.h"
#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"
#include "splitlink/secure/kx.h"
#include "splitlink/secure/mask.h"
#include "splitlink/secure/quantise.h"
#include "splitlink/secure/sealed.h"
#include "splitlink/secure/shamir.h"

namespace py = pybind11;

namespace splitlink::py_util {
namespace {

using secure::Cipher;
using secure::SecretKey;

Cipher cipher_of(uint32_t c) {
  if (c != 1 && c != 2) throw py::value_error("unknown cipher code " + std::to_string(c));
  return static_cast<Cipher>(c);
}

SecretKey key_from(const py::object& obj) {
  PyBuffer b(obj, PyBUF_SIMPLE, "key");
  return SecretKey(b.data(), b.size());
}

std::vector<uint8_t> bytes_of(const py::object& obj, const char* what) {
  PyBuffer b(obj, PyBUF_SIMPLE, what);
  return std::vector<uint8_t>(b.data(), b.data() + b.size());
}

py::bytes to_bytes(const uint8_t* p, size_t n) { return py::bytes(reinterpret_cast<const char*>(p), n); }

std::vector<secure::MaskStream> streams_of(const py::list& streams) {
  std::vector<secure::MaskStream> out;
  for (const auto& item : streams) {
    auto t = item.cast<py::tuple>();
    secure::MaskStream s;
    s.key = t[0].cast<SecretKey&>();
    s.sign = t[1].cast<int>();
    out.push_back(s);
  }
  return out;
}

}  // namespace

void register_secure(py::module_ m) {
  m.attr("KEY_BYTES") = secure::kKeyBytes;
  m.attr("TAG_BYTES") = secure::kTagBytes;
  m.attr("DEFAULT_SEGMENT") = secure::kDefaultSegment;
  m.attr("FIXED_LIMIT") = secure::kFixedLimit;
  py::dict ciphers;  // name -> code, the `cipher` argument of the functions below
  for (Cipher c : {Cipher::kAes256Gcm, Cipher::kChaCha20Poly1305}) {
    ciphers[py::str(secure::cipher_name(c))] = static_cast<uint32_t>(c);
  }
  m.attr("CIPHERS") = ciphers;

  py::class_<SecretKey>(m, "Key", "32 secret bytes held in native memory, wiped when freed, never printed.")
      .def(py::init([](const py::object& b) { return key_from(b); }), py::arg("key_bytes"))
      .def("equals", &SecretKey::equals, py::arg("other"), "Constant-time comparison.")
      .def("__repr__", [](const SecretKey&) { return std::string("<splitlink.secure.Key: 32 bytes, hidden>"); })
      .def("__reduce__", [](const SecretKey&) -> py::object {
        throw py::type_error("keys cannot be pickled; derive them again in the other process");
      });

  py::class_<secure::X25519KeyPair>(m, "X25519KeyPair")
      .def_static("generate", &secure::X25519KeyPair::generate)
      .def_static("from_private_bytes",
                  [](const py::object& b) {
                    auto v = bytes_of(b, "private key");
                    return secure::X25519KeyPair::from_private(v.data(), v.size());
                  })
      .def("public_bytes",
           [](const secure::X25519KeyPair& k) {
             auto p = k.public_key();
             return to_bytes(p.data(), p.size());
           })
      .def("private_key", &secure::X25519KeyPair::private_key)
      .def(
          "exchange",
          [](const secure::X25519KeyPair& k, const py::object& peer) {
            auto v = bytes_of(peer, "peer public key");
            return k.exchange(v.data(), v.size());
          },
          py::arg("peer_public"))
      .def("__repr__", [](const secure::X25519KeyPair& k) {
        auto p = k.public_key();
        static const char* hex = "0123456789abcdef";
        std::string s;
        for (size_t i = 0; i < 8; ++i) {
          s += hex[p[i] >> 4];
          s += hex[p[i] & 15];
        }
        return "<X25519KeyPair public=" + s + "...>";
      });

  m.def(
      "hkdf_sha256",
      [](const py::object& ikm, const py::object& salt, const py::object& info, size_t length) {
        auto i = bytes_of(ikm, "ikm"), s = bytes_of(salt, "salt"), f = bytes_of(info, "info");
        if (length == 0 || length > 255 * 32) throw py::value_error("HKDF-SHA256 length must be 1..8160");
        std::vector<uint8_t> out(length);
        secure::hkdf_sha256(i.data(), i.size(), s.data(), s.size(), f.data(), f.size(), out.data(), length);
        return to_bytes(out.data(), out.size());
      },
      py::arg("ikm"), py::arg("salt"), py::arg("info"), py::arg("length"));

  m.def("aead_seal", [](uint32_t c, const SecretKey& key, const py::object& nonce, const py::object& aad,
                        const py::object& plaintext) {
    auto n = bytes_of(nonce, "nonce"), a = bytes_of(aad, "aad");
    if (n.size() != secure::kNonceBytes) throw py::value_error("nonce must be 12 bytes");
    PyBuffer p(plaintext, PyBUF_SIMPLE, "plaintext");
    std::vector<uint8_t> out(p.size() + secure::kTagBytes);
    secure::aead_seal(cipher_of(c), key, n.data(), a.data(), a.size(), p.data(), p.size(), out.data(),
                      out.data() + p.size());
    return to_bytes(out.data(), out.size());
  });
  m.def("aead_open",
        [](uint32_t c, const SecretKey& key, const py::object& nonce, const py::object& aad, const py::object& sealed) {
          auto n = bytes_of(nonce, "nonce"), a = bytes_of(aad, "aad");
          if (n.size() != secure::kNonceBytes) throw py::value_error("nonce must be 12 bytes");
          PyBuffer s(sealed, PyBUF_SIMPLE, "ciphertext");
          if (s.size() < secure::kTagBytes) throw CryptoError("ciphertext shorter than its 16-byte tag");
          const size_t len = s.size() - secure::kTagBytes;
          std::vector<uint8_t> out(len);
          if (!secure::aead_open(cipher_of(c), key, n.data(), a.data(), a.size(), s.data(), len, out.data(),
                                 s.data() + len)) {
            throw CryptoError("authentication failed: the message was tampered with or the key, nonce or AAD is wrong");
          }
          return to_bytes(out.data(), out.size());
        });

  m.def("derive_session_keys",
        [](const secure::X25519KeyPair& mine, const py::object& peer_public, const std::string& me,
           const std::string& peer, const py::object& session_id, uint32_t c) {
          auto pub = bytes_of(peer_public, "peer public key");
          if (pub.size() != secure::kX25519Bytes) throw CryptoError("an X25519 public key is 32 bytes");
          auto sid = bytes_of(session_id, "session_id");
          secure::SessionKeys k = secure::derive_session_keys(mine, pub.data(), me, peer, sid, cipher_of(c));
          return py::make_tuple(k.send, k.recv);
        });
  m.def("derive_mask_key", [](const secure::X25519KeyPair& mine, const py::object& peer_public, const std::string& me,
                              const std::string& peer, const py::object& session_id) {
    auto pub = bytes_of(peer_public, "peer public key");
    if (pub.size() != secure::kX25519Bytes) throw CryptoError("an X25519 public key is 32 bytes");
    auto sid = bytes_of(session_id, "session_id");
    return secure::derive_mask_key(mine, pub.data(), me, peer, sid);
  });

  py::class_<secure::Sealer>(m, "Sealer")
      .def(py::init([](uint32_t c, const SecretKey& key, std::string sender, uint32_t segment_size) {
             return std::make_unique<secure::Sealer>(cipher_of(c), key, std::move(sender), segment_size);
           }),
           py::arg("cipher"), py::arg("key"), py::arg("sender"), py::arg("segment_size") = secure::kDefaultSegment)
      .def_property_readonly("sender", &secure::Sealer::sender)
      .def_property_readonly("segment_size", &secure::Sealer::segment_size)
      .def(
          "seal",
          [](secure::Sealer& s, const py::object& frame, const py::object& pool, unsigned threads) {
            PyBuffer in(frame, PyBUF_SIMPLE, "frame");
            const wire::FrameHeader h = wire::decode_header(in.data(), in.size());
            return seal_frame(s, h.meta, in.size(), pool, threads, in.data());
          },
          py::arg("frame"), py::arg("pool") = py::none(), py::arg("threads") = 0);

  py::class_<secure::Opener>(m, "Opener")
      .def(py::init([](uint32_t c, const SecretKey& key, std::string peer) {
             return std::make_unique<secure::Opener>(cipher_of(c), key, std::move(peer));
           }),
           py::arg("cipher"), py::arg("key"), py::arg("peer"))
      .def_property_readonly("peer", &secure::Opener::peer)
      .def_property_readonly("last_seq", &secure::Opener::last_seq)
      .def(
          "open",
          [](secure::Opener& o, const py::object& sealed, const py::object& pool, unsigned threads) {
            PyBuffer in(sealed, PyBUF_SIMPLE, "sealed frame");
            secure::SealedHeader h;
            try {
              h = secure::decode_sealed_header(in.data(), in.size());
            } catch (const WireError& e) {
              throw CryptoError(std::string("sealed frame from '") + o.peer() + "' rejected: " + e.what());
            }
            py::object out = new_frame_buffer(pool, h.plaintext_length);
            FrameBuffer& fb = out.cast<FrameBuffer&>();
            secure::SealedHeader opened;
            {
              // Safe without the GIL: `out` is ours and `sealed` is pinned; Opener locks its own state.
              py::gil_scoped_release nogil;
              opened = o.open(in.data(), in.size(), fb.mem.data(), fb.mem.capacity(), threads);
            }
            return py::make_tuple(out, opened.meta.sender, opened.meta.seq, opened.meta.step, opened.meta.kind);
          },
          py::arg("sealed"), py::arg("pool") = py::none(), py::arg("threads") = 0);

  m.def("mask_encode", [](const py::object& x, unsigned frac_bits, const py::list& streams, uint64_t stream_id,
                          const py::object& out, const std::string& name, unsigned threads) {
    PyBuffer in(x, PyBUF_C_CONTIGUOUS, "x");
    PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
    if (in.size() % 4 != 0 || dst.size() != in.size() * 2)
      throw py::value_error("x must be float32 and out int64 of the same length");
    const auto s = streams_of(streams);
    // Safe without the GIL: both buffers are pinned by their exports; keys were copied.
    py::gil_scoped_release nogil;
    secure::mask_encode(reinterpret_cast<const float*>(in.data()), in.size() / 4, frac_bits, s, stream_id,
                        reinterpret_cast<uint64_t*>(dst.mutable_data()), name, threads);
  });
  m.def("sum_decode", [](const py::list& ys, unsigned frac_bits, const py::object& out, unsigned threads) {
    std::vector<PyBuffer> views;
    views.reserve(py::len(ys));
    std::vector<const uint64_t*> ptrs;
    PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
    for (const auto& y : ys) {
      views.emplace_back(y, PyBUF_C_CONTIGUOUS, "masked tensor");
      if (views.back().size() != dst.size() * 2)
        throw py::value_error("every masked tensor must have out's length (int64 vs float32)");
      ptrs.push_back(reinterpret_cast<const uint64_t*>(views.back().data()));
    }
    // Safe without the GIL: all buffers are pinned by their exports.
    py::gil_scoped_release nogil;
    secure::sum_decode(ptrs, dst.size() / 4, frac_bits, reinterpret_cast<float*>(dst.mutable_data()), threads);
  });
  m.def("unmask_decode", [](const py::object& y, unsigned frac_bits, const py::list& streams, uint64_t stream_id,
                            const py::object& out, unsigned threads) {
    PyBuffer in(y, PyBUF_C_CONTIGUOUS, "y");
    PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
    if (in.size() != dst.size() * 2) throw py::value_error("y must be int64 and out float32 of the same length");
    const auto s = streams_of(streams);
    // Safe without the GIL: both buffers are pinned by their exports; keys were copied.
    py::gil_scoped_release nogil;
    secure::unmask_decode(reinterpret_cast<const uint64_t*>(in.data()), dst.size() / 4, frac_bits, s, stream_id,
                          reinterpret_cast<float*>(dst.mutable_data()), threads);
  });

  m.attr("SHAMIR_PRIME") = secure::shamir::kPrime;
  m.def(
      "shamir_split",
      [](const py::object& secret, unsigned threshold, const std::vector<uint32_t>& xs) {
        PyBuffer s(secret, PyBUF_SIMPLE, "secret");
        auto shares = secure::shamir::split(s.data(), s.size(), threshold, xs);
        py::list out;
        for (const auto& sh : shares) out.append(to_bytes(sh.data(), sh.size()));
        return out;
      },
      py::arg("secret"), py::arg("threshold"), py::arg("xs"),
      "One share per holder coordinate in xs; any `threshold` of them reconstruct the secret.");
  m.def(
      "shamir_combine",
      [](const py::list& shares, unsigned threshold) {
        std::vector<std::vector<uint8_t>> v;
        for (const auto& sh : shares) v.push_back(bytes_of(py::reinterpret_borrow<py::object>(sh), "share"));
        auto secret = secure::shamir::combine(v, threshold);
        py::bytes out = to_bytes(secret.data(), secret.size());
        OPENSSL_cleanse(secret.data(), secret.size());
        return out;
      },
      py::arg("shares"), py::arg("threshold"), "The secret from the first `threshold` shares (Lagrange at 0).");
  m.def(
      "shamir_share_x",
      [](const py::object& share) {
        PyBuffer s(share, PyBUF_SIMPLE, "share");
        return secure::shamir::share_x(s.data(), s.size());
      },
      py::arg("share"));
  m.def("shamir_share_bytes", &secure::shamir::share_bytes, py::arg("secret_len"));

  m.def(
      "stochastic_quantise",
      [](const py::object& x, double clip, double levels, const py::object& key, const py::object& out,
         unsigned threads) {
        PyBuffer in(x, PyBUF_C_CONTIGUOUS, "x");
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        auto k = bytes_of(key, "rounding key");
        if (k.size() != 16) throw py::value_error("the rounding key is 16 bytes");
        if (in.size() % 4 != 0 || dst.size() < in.size())
          throw py::value_error("x must be float32 and out float32 at least as long");
        uint64_t clipped = 0;
        {
          // Safe without the GIL: both buffers are pinned by their exports; the key was copied.
          py::gil_scoped_release nogil;
          clipped = secure::stochastic_quantise(reinterpret_cast<const float*>(in.data()), in.size() / 4, clip, levels,
                                                k.data(), reinterpret_cast<float*>(dst.mutable_data()), threads);
        }
        OPENSSL_cleanse(k.data(), k.size());
        return clipped;
      },
      py::arg("x"), py::arg("clip"), py::arg("levels"), py::arg("key"), py::arg("out"), py::arg("threads") = 0,
      "Stochastic rounding of float32 x into out[:len(x)] (exact float32 integers); returns the clipped count.");

  m.def(
      "quantise_mask32",
      [](const py::object& x, double clip, double levels, const py::object& key, const py::list& streams,
         uint64_t stream_id, const py::object& out, unsigned threads, uint64_t first, const py::object& base,
         float weight) {
        PyBuffer in(x, PyBUF_C_CONTIGUOUS, "x");
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        std::optional<PyBuffer> b;
        if (!base.is_none()) {
          b.emplace(base, PyBUF_C_CONTIGUOUS, "base");
          if (b->size() != in.size()) throw py::value_error("base must be float32 of x's length");
        }
        auto k = bytes_of(key, "rounding key");
        if (k.size() != 16) throw py::value_error("the rounding key is 16 bytes");
        if (in.size() % 4 != 0 || dst.size() < in.size())
          throw py::value_error("x must be float32 and out 32-bit, at least as long");
        const auto s = streams_of(streams);
        uint64_t clipped = 0;
        {
          // Safe without the GIL: all buffers are pinned by their exports; keys were copied.
          py::gil_scoped_release nogil;
          clipped =
              secure::quantise_mask32(reinterpret_cast<const float*>(in.data()), in.size() / 4, clip, levels, k.data(),
                                      s, stream_id, reinterpret_cast<uint32_t*>(dst.mutable_data()), threads, first,
                                      b ? reinterpret_cast<const float*>(b->data()) : nullptr, weight);
        }
        OPENSSL_cleanse(k.data(), k.size());
        return clipped;
      },
      py::arg("x"), py::arg("clip"), py::arg("levels"), py::arg("key"), py::arg("streams"), py::arg("stream_id"),
      py::arg("out"), py::arg("threads") = 0, py::arg("first") = 0, py::arg("base") = py::none(),
      py::arg("weight") = 1.0f,
      "Stochastic rounding and 32-bit ring masks in one pass (of (x - base) * weight with base); the clipped\n"
      "count. `first`: x[0]'s position in the streams.");
  m.def(
      "ring32_add_masks",
      [](const py::list& ys, const py::list& streams, uint64_t stream_id, uint64_t first, const py::object& out,
         unsigned threads) {
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        if (dst.size() % 4 != 0) throw py::value_error("out must hold 32-bit ring elements");
        std::vector<PyBuffer> views;
        views.reserve(py::len(ys));
        std::vector<const uint32_t*> ptrs;
        for (const auto& y : ys) {
          views.emplace_back(y, PyBUF_C_CONTIGUOUS, "ring tensor");
          if (views.back().size() != dst.size()) throw py::value_error("every ring tensor must have out's length");
          ptrs.push_back(reinterpret_cast<const uint32_t*>(views.back().data()));
        }
        const auto s = streams_of(streams);
        // Safe without the GIL: all buffers are pinned by their exports; keys were copied.
        py::gil_scoped_release nogil;
        secure::ring32_add_masks(ptrs, dst.size() / 4, s, stream_id, first,
                                 reinterpret_cast<uint32_t*>(dst.mutable_data()), threads);
      },
      py::arg("ys"), py::arg("streams"), py::arg("stream_id"), py::arg("first"), py::arg("out"), py::arg("threads") = 0,
      "out = sum of ys + sum of sign * keystream from element `first` (mod 2^32), one pass.");

  m.def("openssl_ctr_reference", [](size_t size, unsigned iterations) {
    // AES-128-CTR keystream speed of the linked OpenSSL (the masks' PRG), one context, same
    // buffer, calling thread. Returns seconds per `size` bytes (median).
    std::vector<uint8_t> buf(size, 0);
    uint8_t key[16] = {1}, iv[16] = {0};
    std::vector<double> times;
    py::gil_scoped_release nogil;
    EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, "AES-128-CTR", nullptr);
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex2(ctx, c, key, iv, nullptr);
    for (unsigned it = 0; it < iterations; ++it) {
      int outl = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t off = 0; off < size; off += size_t{1} << 20) {
        EVP_EncryptUpdate(ctx, buf.data() + off, &outl, buf.data() + off,
                          static_cast<int>(std::min(size - off, size_t{1} << 20)));
      }
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(c);
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  });

  m.def("openssl_aead_reference", [](uint32_t c, size_t size, unsigned iterations) {
    // The linked OpenSSL's own speed: one EVP context, one update per message, same bytes every
    // time (what `openssl speed -evp` measures), on the calling thread. Returns seconds per message.
    std::vector<uint8_t> buf(size, 0x5A), tag(secure::kTagBytes);
    const SecretKey key;
    uint8_t nonce[secure::kNonceBytes] = {0};
    double best = 0;
    {
      py::gil_scoped_release nogil;
      std::vector<double> times;
      for (unsigned it = 0; it < iterations; ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        secure::aead_seal(cipher_of(c), key, nonce, nullptr, 0, buf.data(), buf.size(), buf.data(), tag.data());
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(times.begin(), times.end());
      best = times[times.size() / 2];
    }
    return best;
  });
}

}  // namespace splitlink::py_util
