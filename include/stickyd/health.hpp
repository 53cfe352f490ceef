// Target health, as pure logic: the rise/fall policy, the HTTP status-line parser,
// and the success-code matcher. Nothing here does I/O; the control thread
// (src/control.cpp) feeds it results and carries records across reloads
// (stickyd/target_set.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace stickyd {

// NLB target health states (DescribeTargetHealth's State).
enum class HealthState : uint8_t {
    initial,    // registered; no verdict yet
    healthy,    // takes new connections
    unhealthy,  // takes none (unless the whole group is down: fail-open)
    draining,   // being deregistered: takes none; checks no longer change it
};

std::string_view to_string(HealthState state);

struct Thresholds {
    unsigned healthy = 5;    // consecutive passes that make an unhealthy target healthy
    unsigned unhealthy = 2;  // consecutive failures that make a target unhealthy
};

// Everything the policy remembers about one target. As in HAProxy's check.c, one
// counter holds the run of results that disagree with the current state: a result
// that agrees resets it, so a flapping target never accumulates toward a change.
struct HealthRecord {
    HealthState state = HealthState::initial;
    unsigned streak = 0;  // consecutive results against `state`
    // Targets known when the daemon starts are routed to while still `initial`:
    // otherwise a restart would move every sticky client away and back while the
    // first round of checks is spread over one interval. A target added to a running
    // daemon (reload) waits for its first pass, as on the NLB.
    bool routable_while_initial = false;

    friend bool operator==(const HealthRecord&, const HealthRecord&) = default;
};

struct HealthStep {
    HealthRecord record;
    std::optional<HealthState> transition;  // the new state, when it changed
};

// One active check result. NLB semantics:
//   initial   + pass -> healthy at once (a new target gets traffic after its first pass)
//   initial   + fail -> stays initial until `unhealthy` consecutive failures, then
//                       unhealthy (one lost SYN must not bar a target that never served)
//   healthy   + fail -> unhealthy after `unhealthy` consecutive failures
//   unhealthy + pass -> healthy after `healthy` consecutive passes
//   draining         -> stays draining: deregistration, not health, decides its fate
HealthStep next(const HealthRecord& record, bool passed, const Thresholds& thresholds);

// Enough consecutive connect failures on client traffic (passive checking): the
// target is unhealthy now, without waiting for the next active check. Initial and
// healthy targets fall; unhealthy and draining ones are unchanged.
HealthStep passive_failure(const HealthRecord& record);

// Whether the target may take new connections (before fail-open is considered).
bool routable(const HealthRecord& record);

// ---------------------------------------------------------------------------------
// Fail-open: the NLB's target_group_health.unhealthy_state_routing. When fewer of a
// group's targets in service (registered, not draining) are healthy than either
// threshold asks, the group routes to all of them, healthy or not: the few healthy
// ones would be overloaded, and a target failing its checks may still serve.

struct MinimumHealthyTargets {
    unsigned count = 1;  // ...minimum_healthy_targets.count: the NLB's default 1
    // ...minimum_healthy_targets.percentage (1-100); nullopt = "off", the NLB's default.
    std::optional<unsigned> percentage;

    friend bool operator==(const MinimumHealthyTargets&, const MinimumHealthyTargets&) = default;
};

// The healthy targets `in_service` targets need: the larger of the count and the
// percentage of in_service. A fraction of a target rounds up, so a percentage is
// never met by fewer than that share (50% of 3 needs 2): healthy * 100 >= P * N.
size_t required_healthy(const MinimumHealthyTargets& minimum, size_t in_service);

// Whether the group fails open with `healthy` of its `in_service` targets healthy
// (healthy <= in_service): below either threshold, while some target in service is
// not healthy. With every one healthy, routing to all is what happens anyway, so a
// count above the group's size does not flag a group that is all well; with none
// in service there is nothing to open to.
bool fails_open(const MinimumHealthyTargets& minimum, size_t healthy, size_t in_service);

// "count 3", "count 1, percentage 50%": the thresholds as the config names them.
std::string to_string(const MinimumHealthyTargets& minimum);

// ---------------------------------------------------------------------------------
// HTTP health-check responses.

struct StatusLine {
    enum class Result : uint8_t { incomplete, ok, malformed };
    Result result = Result::incomplete;
    int code = 0;              // 100..599 when ok
    std::string_view problem;  // what was wrong, when malformed
};

// Longest status line accepted; a longer one is malformed, not "incomplete forever".
inline constexpr size_t kMaxStatusLine = 1024;

// Parses the start of a response: "HTTP/1.1 200 OK\r\n" (RFC 9112 status-line; the
// reason may be empty or absent, a bare LF ends the line too). `received` is every
// byte read so far; incomplete means "read more", and is only returned while the
// bytes are a valid prefix of a status line.
StatusLine parse_status_line(std::string_view received);

// The NLB HttpCode matcher: "200", "200-399", "200,202,300-399".
class Matcher {
  public:
    Matcher() = default;  // matches nothing; use parse_matcher
    bool matches(int code) const;
    const std::vector<std::pair<uint16_t, uint16_t>>& ranges() const { return ranges_; }
    const std::string& text() const { return text_; }

    friend bool operator==(const Matcher& a, const Matcher& b) { return a.text_ == b.text_; }

  private:
    friend std::variant<Matcher, std::string> parse_matcher(std::string_view text);
    std::vector<std::pair<uint16_t, uint16_t>> ranges_;
    std::string text_;
};

inline constexpr int kMinMatcherCode = 200;  // the NLB's range for HttpCode
inline constexpr int kMaxMatcherCode = 599;

// A Matcher, or what is wrong with `text` (no trailing period, for config errors).
std::variant<Matcher, std::string> parse_matcher(std::string_view text);

}  // namespace stickyd
