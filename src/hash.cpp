#include "stickyd/hash.hpp"

#include <xxhash.h>

namespace stickyd {

// Both functions are XXH3-64 as specified in xxHash 0.8 (its output is frozen
// by upstream). Only key.size bytes are hashed, so IPv4 and IPv6 never share
// input lengths and unused tail bytes cannot leak into the result.
uint64_t hash_ip(const IpKey& key) {
    return XXH3_64bits(key.bytes.data(), key.size);
}

uint64_t hash_point(std::string_view id, uint32_t replica) {
    return XXH3_64bits_withSeed(id.data(), id.size(), replica);
}

}  // namespace stickyd
