// Shared fixtures for the balancer tests (ring, maglev, routing): deterministic
// client keys and member sets, so every test file measures the same population.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "stickyd/balancer.hpp"
#include "stickyd/hash.hpp"

namespace stickyd::test {

// splitmix64: deterministic on every platform, unlike <random>'s distributions.
inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Hashes of pseudo-random client IPv4 addresses: what the ring sees in production.
inline std::vector<uint64_t> client_hashes(size_t n, uint64_t seed = 1) {
    std::vector<uint64_t> out(n);
    for (auto& h : out) {
        IpKey key;
        key.size = 4;
        const auto ip = static_cast<uint32_t>(splitmix64(seed));
        std::memcpy(key.bytes.data(), &ip, 4);
        h = hash_ip(key);
    }
    return out;
}

inline std::vector<Member> equal_members(size_t n) {
    std::vector<Member> out;
    for (size_t i = 0; i < n; ++i) {
        out.push_back(
            {"10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1) + ":80", 1});
    }
    return out;
}

inline std::vector<Member> mixed_members() {
    return {{"web-c", 3}, {"web-a", 1}, {"web-e", 1}, {"web-b", 2}, {"web-d", 1},
            {"web-h", 5}, {"web-f", 1}, {"web-g", 2}, {"web-j", 1}, {"web-i", 1}};
}

inline const std::string& owner_id(const Balancer& b, uint64_t h) {
    return b.members()[b.owner(h)].id;
}

inline std::vector<uint8_t> all_usable(const Balancer& b) {
    return std::vector<uint8_t>(b.members().size(), 1);
}

}  // namespace stickyd::test
