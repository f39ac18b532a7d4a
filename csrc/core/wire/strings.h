// Reading string fields of frames and sealed frames. Internal to the core.
#pragma once

#include <string>

#include "pbio.h"

namespace splitlink::wire {

// Reads a length-delimited string field (at most kMaxStringBytes, valid UTF-8) or throws WireError.
std::string read_string(pb::Reader& r, const char* what);

}  // namespace splitlink::wire
