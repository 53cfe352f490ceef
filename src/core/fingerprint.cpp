#include "stickyd/fingerprint.hpp"

#include <fmt/core.h>
#include <xxhash.h>

#include <algorithm>
#include <tuple>

namespace stickyd {
namespace {

// Each field carries its length, so no two different inputs encode the same
// bytes ("ab"+"c" against "a"+"bc").
void put(std::string& out, std::string_view field) {
    const auto n = static_cast<uint32_t>(field.size());
    for (int shift = 0; shift < 32; shift += 8) out += static_cast<char>((n >> shift) & 0xff);
    out += field;
}

void put(std::string& out, uint64_t number) {
    put(out, std::to_string(number));
}

std::string hex(uint64_t digest) {
    return fmt::format("{:016x}", digest);
}

std::string encode(const RoutingInputs& inputs) {
    std::vector<const RoutingInputs::Target*> sorted;
    for (const auto& t : inputs.targets) sorted.push_back(&t);
    std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
        return std::tie(a->id, a->address, a->weight) < std::tie(b->id, b->address, b->weight);
    });
    std::string out;
    put(out, "stickyd-routing");
    put(out, kMappingVersion);
    put(out, inputs.algorithm);
    put(out, inputs.table_size);
    put(out, inputs.prefix_v4);
    put(out, inputs.prefix_v6);
    put(out, sorted.size());
    for (const auto* t : sorted) {
        put(out, t->id);
        put(out, t->address);
        put(out, t->weight);
    }
    return out;
}

}  // namespace

RoutingInputs routing_inputs(const RoutingTable& table) {
    RoutingInputs out;
    out.prefix_v4 = table.prefix_v4;
    out.prefix_v6 = table.prefix_v6;
    if (!table.balancer) return out;
    out.algorithm = std::string(table.balancer->algorithm());
    out.table_size = table.balancer->table_size();
    const std::vector<Member>& members = table.balancer->members();
    for (size_t i = 0; i < members.size() && i < table.targets.size(); ++i) {
        out.targets.push_back(
            {members[i].id, table.targets[i].address.to_string(), members[i].weight});
    }
    return out;
}

RoutingInputs routing_inputs(const TargetGroupConfig& group) {
    RoutingInputs out;
    const bool maglev = group.algorithm == Algorithm::maglev;
    out.algorithm = maglev ? "maglev" : "ring";
    out.table_size = maglev ? group.maglev_table_size : 0;
    out.prefix_v4 = group.stickiness.prefix_v4;
    out.prefix_v6 = group.stickiness.prefix_v6;
    for (const TargetConfig& t : group.targets) {
        // The identity rule of build_routing_table: an unnamed target is its address.
        const std::string address = t.address.to_string();
        out.targets.push_back({t.id.empty() ? address : t.id, address, t.weight});
    }
    return out;
}

std::string routing_fingerprint(const RoutingInputs& inputs) {
    const std::string bytes = encode(inputs);
    return hex(XXH3_64bits(bytes.data(), bytes.size()));
}

std::string routing_fingerprint(const RoutingTable& table) {
    return routing_fingerprint(routing_inputs(table));
}

std::string usable_fingerprint(const RoutingTable& table) {
    std::string bytes;
    put(bytes, routing_fingerprint(table));
    // Targets are sorted by id already (the balancer's member order).
    for (size_t i = 0; i < table.targets.size() && i < table.usable.size(); ++i) {
        if (table.usable[i] != 0) put(bytes, table.targets[i].id);
    }
    return hex(XXH3_64bits(bytes.data(), bytes.size()));
}

}  // namespace stickyd
