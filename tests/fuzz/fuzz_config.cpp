// libFuzzer target for the configuration loader (scripts/fuzz runs it under ASan and
// UBSan). TOML text goes in; what comes out is either a Config that the validator
// accepts or exactly one error line that names the file. toml++ is compiled into
// this target header-only (meson.build), so the fuzzer also sees inside the parser
// that the loader's nesting and size bounds protect.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include "stickyd/balancer.hpp"
#include "stickyd/config.hpp"

using namespace stickyd;

namespace {

constexpr std::string_view kSource = "fuzz.toml";

void require(bool condition, const char* what, std::string_view detail = {}) {
    if (condition) return;
    std::fprintf(stderr, "property violated: %s\n%.*s\n", what, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

bool has_control_character(std::string_view text) {
    for (char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) return true;
    }
    return false;
}

// One line for the log, the terminal and `systemctl status`: it starts with the
// file name, says something, and carries no line break or other control character
// that could forge or garble a log line.
void check_error(const ConfigError& error) {
    const std::string line = error.to_string();
    require(!error.message.empty(), "an error has a message", line);
    require(line.starts_with(kSource), "an error line starts with the file name", line);
    require(!has_control_character(line), "an error is one line without control characters", line);
    require(error.column == 0 || error.line != 0, "a column comes with a line", line);
}

void check_group(const TargetGroupConfig& group) {
    std::set<std::string> ids;
    std::set<std::string> addresses;
    uint64_t weight = 0;
    for (const TargetConfig& target : group.targets) {
        require(!target.id.empty() && !has_control_character(target.id), "target ids are clean",
                target.id);
        require(ids.insert(target.id).second, "target ids are unique", target.id);
        require(target.address.family() == AF_INET || target.address.family() == AF_INET6,
                "targets have an address");
        require(addresses.insert(target.address.to_string()).second, "target addresses are unique");
        require(target.weight >= 1 && target.weight <= kMaxWeight, "weights are in range");
        weight += target.weight;
    }
    require(!capacity_error(group, group.targets.size(), weight),
            "the group's balancer can hold its targets");
    const HealthCheckConfig& hc = group.health_check;
    require(hc.effective_timeout() < hc.interval, "a check times out before the next one");
    require(hc.healthy_threshold >= 2 && hc.unhealthy_threshold >= 2, "thresholds are in range");
}

// The invariants the daemon relies on without checking again.
void check_config(const Config& config) {
    auto again = validate(config, kSource);
    require(!again, "a loaded config passes validate()", again ? again->to_string() : "");
    require(!config.listeners.empty(), "a loaded config has a listener");
    std::set<std::string> names;
    for (const ListenerConfig& listener : config.listeners) {
        require(config.find_group(listener.target_group) != nullptr,
                "every listener's group exists", listener.target_group);
        require(names.insert(listener.name).second, "listener names are unique", listener.name);
        require(!has_control_character(listener.name), "listener names are clean", listener.name);
    }
    for (const TargetGroupConfig& group : config.target_groups) check_group(group);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const ConfigResult result = parse_config(text, kSource);
    if (const auto* error = std::get_if<ConfigError>(&result)) {
        check_error(*error);
    } else {
        check_config(std::get<Config>(result));
    }
    return 0;
}
