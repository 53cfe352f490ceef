// The version-stable hashes behind stickiness. Changing any of these reshuffles
// every client of every deployment, so golden vectors in tests/unit pin them.
#pragma once

#include <cstdint>
#include <string_view>

#include "stickyd/address.hpp"

namespace stickyd {

// XXH3-64 (seed 0) of the key's bytes: 4 bytes for IPv4, 16 for IPv6, network order.
uint64_t hash_ip(const IpKey& key);

// Position of virtual node `replica` of the member with stable identity `id`:
// XXH3-64 (seed 0) of the id's bytes followed by `replica` as 4 little-endian bytes.
uint64_t hash_point(std::string_view id, uint32_t replica);

}  // namespace stickyd
