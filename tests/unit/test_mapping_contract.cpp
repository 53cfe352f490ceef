// The mapping contract (docs/stickiness.md, "The mapping contract"): for one
// canonical configuration, where a million IPv4 and a million IPv6 clients go,
// pinned as one digest per algorithm and address family. Any change to hashing,
// prefixes, identities, the ring's points or the maglev table that would move a
// single client on upgrade fails here. Such a change needs a new mapping
// version (kMappingVersion) and a release note, never new golden digests alone.
#include <doctest/doctest.h>
#include <xxhash.h>

#include <cstring>
#include <map>
#include <string>
#include <variant>

#include "stickyd/config.hpp"
#include "stickyd/fingerprint.hpp"
#include "stickyd/routing.hpp"

using namespace stickyd;

namespace {

constexpr size_t kKeys = 1000000;

// The canonical group: five targets with ids, listed out of order, one of weight 2.
std::string canonical_toml(const char* algorithm) {
    return std::string(R"([[listener]]
bind = "127.0.0.1:8000"
target_group = "g"
[[target_group]]
name = "g"
algorithm = ")") +
           algorithm + R"("
[[target_group.target]]
id = "delta"
address = "10.0.0.4:80"
[[target_group.target]]
id = "alpha"
address = "10.0.0.1:80"
[[target_group.target]]
id = "echo"
address = "10.0.0.5:80"
weight = 2
[[target_group.target]]
id = "charlie"
address = "10.0.0.3:80"
[[target_group.target]]
id = "bravo"
address = "10.0.0.2:80"
)";
}

std::shared_ptr<const RoutingTable> canonical_table(const char* algorithm) {
    ConfigResult result = parse_config(canonical_toml(algorithm), "contract.toml");
    REQUIRE(std::holds_alternative<Config>(result));
    return build_routing_table(std::get<Config>(result).target_groups.at(0));
}

// splitmix64, written out here so that no shared fixture can change the keys.
uint64_t next_key(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Key i of a family: the big-endian bytes of successive splitmix64 outputs (seed 4
// for IPv4, 6 for IPv6). XXH64 (seed 0) over the chosen target ids, each followed
// by '\n', in key order. `down` names a target taken out of the usable set, which
// pins the failover walk as well as the owner.
uint64_t mapping_digest(const RoutingTable& table, uint8_t family_size,
                        const std::string& down = "",
                        std::map<std::string, size_t>* counts = nullptr) {
    std::vector<uint8_t> usable = table.usable;
    for (size_t i = 0; i < table.targets.size(); ++i) {
        if (table.targets[i].id == down) usable[i] = 0;
    }
    RoutingTable view = table;
    view.usable = usable;

    XXH64_state_t* state = XXH64_createState();
    XXH64_reset(state, 0);
    uint64_t seed = family_size;
    for (size_t i = 0; i < kKeys; ++i) {
        IpKey key;
        key.size = family_size;
        for (size_t b = 0; b < family_size; b += 8) {
            const uint64_t r = next_key(seed);
            for (size_t j = 0; j < 8 && b + j < family_size; ++j) {
                key.bytes[b + j] = static_cast<uint8_t>(r >> (56 - 8 * j));
            }
        }
        const std::string& id = view.targets.at(view.pick(view.key_hash(key), 0)).id;
        if (counts) ++(*counts)[id];
        XXH64_update(state, id.data(), id.size());
        XXH64_update(state, "\n", 1);
    }
    const uint64_t digest = XXH64_digest(state);
    XXH64_freeState(state);
    return digest;
}

}  // namespace

TEST_CASE("the keys spread over every target by weight, so the digests pin something") {
    for (const char* algorithm : {"ring", "maglev"}) {
        std::map<std::string, size_t> counts;
        mapping_digest(*canonical_table(algorithm), 4, "", &counts);
        REQUIRE(counts.size() == 5);
        // Not a structured binding: clang before 16 cannot capture one (CHECK_MESSAGE).
        for (const auto& entry : counts) {
            const std::string& id = entry.first;
            const size_t n = entry.second;
            // Weight 1 of 6 is about 16.7%, weight 2 about 33.3%; a few points either way.
            const double share = static_cast<double>(n) / kKeys;
            CHECK_MESSAGE(share > (id == "echo" ? 0.28 : 0.12), algorithm << " " << id);
            CHECK_MESSAGE(share < (id == "echo" ? 0.39 : 0.22), algorithm << " " << id);
        }
    }
}

TEST_CASE("the mapping version this file pins") {
    CHECK(kMappingVersion == 1);
}

TEST_CASE("ring: where a million IPv4 and a million IPv6 clients go is pinned") {
    const auto table = canonical_table("ring");
    CHECK(mapping_digest(*table, 4) == 0xe5026bde34e6fd0full);
    CHECK(mapping_digest(*table, 16) == 0x35bd35e7aa39090eull);
    CHECK(mapping_digest(*table, 4, "charlie") == 0x3e4354f4ab3fa29eull);
    CHECK(routing_fingerprint(*table) == "ce6ab6cbae9a3b80");
}

TEST_CASE("maglev: where a million IPv4 and a million IPv6 clients go is pinned") {
    const auto table = canonical_table("maglev");
    CHECK(mapping_digest(*table, 4) == 0x42111351df1a4abcull);
    CHECK(mapping_digest(*table, 16) == 0x7ebb84231272d47bull);
    CHECK(mapping_digest(*table, 4, "charlie") == 0x5a515907c577a37eull);
    CHECK(routing_fingerprint(*table) == "eb40d8731013fa34");
}
