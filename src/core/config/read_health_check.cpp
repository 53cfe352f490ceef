// [target_group.health_check]: the NLB's health check settings, and passive checking.
#include <fmt/format.h>

#include "core/config/read.hpp"
#include "core/config/table_reader.hpp"

namespace stickyd::config_detail {

HealthCheckConfig read_health_check(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(
        diag, table, std::move(path),
        {"enabled", "protocol", "port", "path", "interval", "timeout", "healthy_threshold",
         "unhealthy_threshold", "matcher", "passive", "passive_failures"});
    HealthCheckConfig hc;
    if (auto v = r.boolean("enabled")) hc.enabled = *v;
    if (auto v = r.string("protocol")) {
        if (*v == "tcp") {
            hc.protocol = HealthProtocol::tcp;
        } else if (*v == "http") {
            hc.protocol = HealthProtocol::http;
        } else if (*v == "https") {
            hc.protocol = HealthProtocol::https;
        } else {
            r.invalid("protocol", choice_message(*v, kHealthProtocols));
        }
    }
    if (const toml::node* node = table.get("port")) {
        // NLB writes the port as a string: "traffic-port" or a number.
        std::optional<int64_t> number;
        if (node->is_string()) {
            const std::string text = *r.string("port");  // also records the position
            if (all_digits(text) && text.size() <= 5) {
                number = std::stoll(text);
            } else if (text != "traffic-port") {
                r.invalid("port", int_range_message(kHealthPortRange, describe(*node)));
            }
        } else {
            number = r.integer("port", kHealthPortRange);
        }
        if (number) {
            if (auto problem = outside_range(*number, kHealthPortRange)) {
                r.invalid("port", *problem);
            } else {
                hc.port = static_cast<uint16_t>(*number);
            }
        }
    }
    const bool http = hc.protocol != HealthProtocol::tcp;
    if (auto v = r.string("path")) {
        if (!http) {
            r.invalid("path",
                      "only applies with protocol = \"http\" or \"https\"; set one or remove the "
                      "key");
        }
        hc.path = *v;
    }
    if (auto v = r.duration("interval", kHealthIntervalRange)) hc.interval = *v;
    if (auto v = r.duration("timeout", kHealthTimeoutRange)) hc.timeout = *v;
    if (auto v = r.integer("healthy_threshold", kHealthThresholdRange)) {
        hc.healthy_threshold = static_cast<unsigned>(*v);
    }
    if (auto v = r.integer("unhealthy_threshold", kHealthThresholdRange)) {
        hc.unhealthy_threshold = static_cast<unsigned>(*v);
    }
    if (auto v = r.string("matcher")) {
        if (!http) {
            r.invalid("matcher",
                      "only applies with protocol = \"http\" or \"https\"; set one or remove the "
                      "key");
        }
        auto parsed = parse_matcher(*v);
        if (auto* problem = std::get_if<std::string>(&parsed)) {
            r.invalid("matcher", *problem);
        } else {
            hc.matcher = std::get<Matcher>(std::move(parsed));
        }
    }
    if (auto v = r.boolean("passive")) hc.passive = *v;
    if (auto v = r.integer("passive_failures", kPassiveFailuresRange)) {
        hc.passive_failures = static_cast<unsigned>(*v);
    }
    return hc;
}

}  // namespace stickyd::config_detail
