// The configuration's rules, one definition each: the ranges, names and examples
// that the TOML reader applies while it reads and validate() applies again to the
// whole Config (which quick mode builds in memory), so a flag and a file can never
// disagree about what is valid.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "stickyd/balancer.hpp"
#include "stickyd/config.hpp"

namespace stickyd::config_detail {

using namespace std::chrono_literals;

struct IntRange {
    int64_t min;
    int64_t max;
    std::string_view note;  // appended to the range, e.g. what a special value means
    bool contains(int64_t v) const { return v >= min && v <= max; }
};

constexpr IntRange kThreadsRange{0, 256, " (0 = one per online CPU)"};
constexpr IntRange kSplicePipesRange{0, 4096, " (0 = never splice)"};
constexpr IntRange kWeightRange{1, kMaxWeight, ""};
constexpr IntRange kRetriesRange{0, 16, ""};
constexpr IntRange kPrefixV4Range{0, 32, ""};
constexpr IntRange kPrefixV6Range{0, 128, ""};
// Only the bounds a value needs to be worth storing; whether a size suits the group
// (prime, enough entries per target) is the balancer's rule: maglev_table_size_error.
constexpr IntRange kMaglevSizeRange{2, kMaxMaglevTableSize, ""};

struct DurationRange {
    Duration min;
    Duration max;
};

constexpr DurationRange kConnectTimeoutRange{10ms, 60s};
// The NLB caps deregistration_delay at one hour; a longer drain is never intended.
constexpr DurationRange kShutdownGraceRange{0ms, 3600s};
// Long enough for any BGP hold time or readiness probe period; the withdraw window
// is spent serving, so it costs only time.
constexpr DurationRange kShutdownDelayRange{0ms, 600s};

// Health checks: the NLB allows intervals of 5-300 s and timeouts of 2-120 s. The
// lower bounds here are a stickyd extension so tests and demos can detect a dead
// backend in about a second; below 100 ms checks would only measure scheduling noise.
constexpr DurationRange kHealthIntervalRange{100ms, 300s};
constexpr DurationRange kHealthTimeoutRange{100ms, 120s};
constexpr IntRange kHealthThresholdRange{2, 10, ""};
constexpr IntRange kHealthPortRange{1, 65535, " or \"traffic-port\""};
constexpr IntRange kPassiveFailuresRange{1, 100, ""};
// The NLB allows 60-6000 s; below 60 s is a stickyd extension for tests and demos.
constexpr DurationRange kIdleTimeoutRange{1s, 6000s};
constexpr DurationRange kProxyTimeoutRange{100ms, 60s};
constexpr DurationRange kDeregistrationRange{0s, 3600s};  // the NLB's range
// The NLB's count goes up to the most targets a group may hold; here that is the
// most a maglev table holds (a ring holds fewer).
constexpr IntRange kMinHealthyCountRange{1, kMaxMaglevTableSize / kMaglevMinEntriesPerMember, ""};
constexpr IntRange kMinHealthyPercentRange{1, 100, " or \"off\""};
constexpr DurationRange kDnsRefreshRange{100ms, 3600s};  // below 1s: tests
constexpr size_t kMaxHealthPath = 1024;                  // as the NLB's HealthCheckPath

constexpr std::string_view kDnsExample = "\"app-headless.default.svc.cluster.local:8080\"";
constexpr std::string_view kTargetExample = "127.0.0.1:9001 or [::1]:9001";
constexpr std::string_view kBindExample = "127.0.0.1:8000 or [::]:8000";
constexpr std::string_view kPrefixListExample = "[\"10.0.0.0/8\", \"2001:db8::/32\"]";
constexpr std::string_view kDurationHint =
    "expected a duration such as \"2s\" or \"500ms\" (units ms, s, m, h; a bare integer means "
    "seconds)";

constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error"};
constexpr std::string_view kAlgorithms[] = {"ring", "maglev"};
constexpr std::string_view kHealthProtocols[] = {"tcp", "http", "https"};

// A dns value that is not "NAME:PORT"; the reader and validate() say it alike.
std::string bad_dns_message(std::string_view text);
// The same for a value that is not a string: `got` describes it, `alternative` is
// what else the key takes (" or an array of them").
std::string not_dns_message(std::string_view got, std::string_view alternative = "");
std::string int_range_message(const IntRange& range, std::string_view got);
std::optional<std::string> outside_range(int64_t value, const IntRange& range);

// The shortest exact spelling, so messages echo what a user would have written.
std::string format_duration(Duration d);
std::optional<std::string> outside_range(Duration value, const DurationRange& range);

// Target group names end up in metrics labels and admin URLs: keep them plain.
bool is_valid_group_name(std::string_view name);

// Target ids and listener names are printed bare in log lines and stickyctl tables,
// typed as stickyctl arguments, and put into metrics labels and JSON: a control
// character could forge a log line, and a space, quote or backslash would need
// quoting somewhere. Every address ("[::1]:9001") is one, so default ids are too.
constexpr std::string_view kNameRule =
    "must be printable ASCII without spaces, quotes or backslashes";

bool is_valid_name(std::string_view name);
bool has_control_character(std::string_view text);

}  // namespace stickyd::config_detail
