// Routing fingerprints: a short, stable digest of exactly what decides where a
// client goes, so instances behind one ECMP route can be checked for agreement
// by comparing one string per target group (docs/stickiness.md).
//
// In: the mapping version, the algorithm, the maglev table size, both prefixes,
// and each member's id, address and weight (sorted by id, so listing order does
// not matter). Out: health, drains in progress and counters. Health is each
// instance's own view of its probes and differs for seconds between instances
// that agree on the mapping; a fingerprint that flapped with it could not tell
// configuration drift from a probe that has not run yet. The usable fingerprint
// adds the set of usable members for those who want to see that too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "stickyd/config.hpp"
#include "stickyd/routing.hpp"

namespace stickyd {

// The version of the client -> target mapping: hashes, ring points, maglev
// permutations, failover walk. A change that moves any client of an unchanged
// configuration must bump it (tests/unit/test_mapping_contract.cpp pins it).
inline constexpr unsigned kMappingVersion = 1;

struct RoutingInputs {
    struct Target {
        std::string id;
        std::string address;  // SocketAddress::to_string()
        uint32_t weight = 1;
    };
    std::string algorithm;    // "ring" | "maglev"
    uint32_t table_size = 0;  // maglev entries; 0 for the ring
    unsigned prefix_v4 = 32;
    unsigned prefix_v6 = 128;
    std::vector<Target> targets;  // any order
};

// What a live routing table (its balancer's members) routes by.
RoutingInputs routing_inputs(const RoutingTable& table);
// What a configured group would route by.
RoutingInputs routing_inputs(const TargetGroupConfig& group);

// 16 lowercase hex digits of XXH3-64 over a length-prefixed encoding of the inputs.
std::string routing_fingerprint(const RoutingInputs& inputs);
std::string routing_fingerprint(const RoutingTable& table);
// The routing fingerprint together with the ids of the members usable now.
std::string usable_fingerprint(const RoutingTable& table);

}  // namespace stickyd
