#include "stickyd/hash.hpp"

#include <xxhash.h>

#include <string>

namespace stickyd {

// Both functions are XXH3-64 as specified in xxHash 0.8 (its output is frozen
// by upstream). Only key.size bytes are hashed, so IPv4 and IPv6 never share
// input lengths and unused tail bytes cannot leak into the result.
uint64_t hash_ip(const IpKey& key) {
    return XXH3_64bits(key.bytes.data(), key.size);
}

uint64_t hash_point(std::string_view id, uint32_t replica) {
    // The replica goes into the input, not the seed: XXH3 folds the seed into
    // inputs of 1-8 bytes so weakly that short ids collided point for point.
    // Input = id bytes, then the replica as 4 little-endian bytes.
    std::string buffer(id);
    for (int shift = 0; shift < 32; shift += 8)
        buffer.push_back(static_cast<char>(replica >> shift));
    return XXH3_64bits(buffer.data(), buffer.size());
}

}  // namespace stickyd
