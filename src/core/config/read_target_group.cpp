// [[target_group]] and its subtables: stickiness, targets, deregistration_delay,
// minimum_healthy_targets, and DNS discovery (dns, dns_refresh).
#include <fmt/format.h>

#include <charconv>

#include "core/config/read.hpp"
#include "core/config/table_reader.hpp"

namespace stickyd::config_detail {
namespace {

std::optional<Algorithm> read_algorithm(TableReader& r, std::string_view key) {
    auto text = r.string(key);
    if (!text) return std::nullopt;
    if (*text == "ring") return Algorithm::ring;
    if (*text == "maglev") return Algorithm::maglev;
    r.invalid(key, choice_message(*text, kAlgorithms));
    return std::nullopt;
}

StickinessConfig read_stickiness(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path), {"type", "enabled", "prefix_v4", "prefix_v6"});
    StickinessConfig stickiness;
    if (auto v = r.string("type"); v && *v != "source_ip") {
        r.invalid("type",
                  fmt::format("only \"source_ip\" is supported (as on an NLB), got {:?}", *v));
    }
    // The NLB can turn stickiness off; stickyd exists to be sticky, so only say so.
    if (auto v = r.boolean("enabled"); v && !*v) {
        r.invalid("enabled",
                  "stickyd is always sticky by source IP; set it to true or remove the key");
    }
    if (auto v = r.integer("prefix_v4", kPrefixV4Range)) {
        stickiness.prefix_v4 = static_cast<unsigned>(*v);
    }
    if (auto v = r.integer("prefix_v6", kPrefixV6Range)) {
        stickiness.prefix_v6 = static_cast<unsigned>(*v);
    }
    return stickiness;
}

TargetConfig read_target(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path), {"id", "address", "weight"});
    TargetConfig target;
    if (auto v = r.string("id")) target.id = *v;
    if (auto v = r.address("address", kTargetExample)) {
        target.address = *v;
        if (!r.has("id")) target.id = v->to_string();
    }
    if (auto v = r.integer("weight", kWeightRange)) target.weight = static_cast<uint32_t>(*v);
    r.require("address", "address = \"127.0.0.1:9001\"");
    return target;
}

DeregistrationConfig read_deregistration(Diagnostics& diag, const toml::table& table,
                                         std::string path) {
    TableReader r(diag, table, std::move(path), {"timeout", "connection_termination"});
    DeregistrationConfig delay;
    if (auto v = r.duration("timeout", kDeregistrationRange)) delay.timeout = *v;
    if (auto v = r.boolean("connection_termination")) delay.connection_termination = *v;
    return delay;
}

MinimumHealthyTargets read_minimum_healthy(Diagnostics& diag, const toml::table& table,
                                           std::string path) {
    TableReader r(diag, table, std::move(path), {"count", "percentage"});
    MinimumHealthyTargets minimum;
    if (auto v = r.integer("count", kMinHealthyCountRange)) {
        minimum.count = static_cast<unsigned>(*v);
    }
    if (const toml::node* node = table.get("percentage")) {
        // As on the NLB, "off" or a number.
        if (node->is_string()) {
            if (*r.string("percentage") != "off") {  // r.string records the position
                r.invalid("percentage",
                          int_range_message(kMinHealthyPercentRange, describe(*node)));
            }
        } else if (auto v = r.integer("percentage", kMinHealthyPercentRange)) {
            minimum.percentage = static_cast<unsigned>(*v);
        }
    }
    return minimum;
}

}  // namespace

TargetGroupConfig read_target_group(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path),
                  {"name", "algorithm", "maglev_table_size", "connect_timeout", "connect_retries",
                   "connection_termination_on_unhealthy", "stickiness", "health_check", "target",
                   "deregistration_delay", "minimum_healthy_targets", "proxy_protocol_v2",
                   "preserve_client_ip", "dns", "dns_refresh"});
    TargetGroupConfig group;
    if (auto v = r.string("name")) group.name = *v;
    r.require("name", "name = \"web\"");
    if (auto v = read_algorithm(r, "algorithm")) group.algorithm = *v;
    if (auto v = r.integer("maglev_table_size", kMaglevSizeRange)) {
        // Silently ignoring it would hide a half-finished switch between algorithms.
        if (group.algorithm != Algorithm::maglev) {
            r.invalid("maglev_table_size",
                      "only applies with algorithm = \"maglev\"; set that or remove the key");
        }
        group.maglev_table_size = static_cast<uint32_t>(*v);
    }
    if (auto v = r.duration("connect_timeout", kConnectTimeoutRange)) group.connect_timeout = *v;
    if (auto v = r.integer("connect_retries", kRetriesRange)) {
        group.connect_retries = static_cast<unsigned>(*v);
    }
    if (auto v = r.boolean("connection_termination_on_unhealthy")) {
        group.connection_termination_on_unhealthy = *v;
    }
    if (auto v = r.boolean("proxy_protocol_v2")) group.proxy_protocol_v2 = *v;
    if (auto v = r.boolean("preserve_client_ip")) group.preserve_client_ip = *v;
    if (auto* t = r.table("deregistration_delay", "[target_group.deregistration_delay]")) {
        group.deregistration_delay =
            read_deregistration(diag, *t, r.path_of("deregistration_delay"));
    }
    if (auto* t = r.table("minimum_healthy_targets", "[target_group.minimum_healthy_targets]")) {
        group.minimum_healthy_targets =
            read_minimum_healthy(diag, *t, r.path_of("minimum_healthy_targets"));
    }
    if (auto v = r.dns_names("dns")) group.dns = std::move(*v);
    if (auto v = r.duration("dns_refresh", kDnsRefreshRange)) {
        if (group.dns.empty())
            r.invalid("dns_refresh", "only applies with dns set; set it or remove the key");
        for (DnsDiscoveryConfig& dns : group.dns) dns.refresh = *v;
    }
    if (auto* t = r.table("stickiness", "[target_group.stickiness]")) {
        group.stickiness = read_stickiness(diag, *t, r.path_of("stickiness"));
    }
    if (auto* t = r.table("health_check", "[target_group.health_check]")) {
        group.health_check = read_health_check(diag, *t, r.path_of("health_check"));
    }
    r.for_each_table("target", "[[target_group.target]]",
                     [&](const toml::table& t, std::string target_path) {
                         group.targets.push_back(read_target(diag, t, std::move(target_path)));
                     });
    return group;
}

}  // namespace stickyd::config_detail

namespace stickyd {

// "NAME:PORT" with a DNS name (letters, digits, '-', '_', '.'; labels 1-63, total
// <= 253) and a port 1-65535. An IP literal is also a name getaddrinfo resolves.
std::optional<DnsDiscoveryConfig> parse_dns_name(std::string_view text) {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    const std::string_view name = text.substr(0, colon);
    const std::string_view port_text = text.substr(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
        return std::nullopt;
    }
    if (name.size() > 253) return std::nullopt;
    size_t label = 0;
    for (char c : name) {
        if (c == '.') {
            if (label == 0) return std::nullopt;
            label = 0;
            continue;
        }
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '-' || c == '_';
        if (!ok || ++label > 63) return std::nullopt;
    }
    DnsDiscoveryConfig dns;
    dns.name = std::string(name);
    dns.port = static_cast<uint16_t>(port);
    return dns;
}

}  // namespace stickyd
