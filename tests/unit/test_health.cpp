// The pure health logic: the rise/fall policy (every state x result x streak), the
// HTTP status-line parser against partial and malformed input, the matcher, and
// the store that carries health over a reload.
#include <doctest/doctest.h>

#include <string>

#include "stickyd/config.hpp"
#include "stickyd/health.hpp"

using namespace stickyd;

namespace {

HealthRecord rec(HealthState state, unsigned streak = 0, bool initial_routable = false) {
    return HealthRecord{state, streak, initial_routable};
}

// Feeds results; returns the transitions seen, as "state@index".
std::string run(HealthRecord r, std::string_view results, Thresholds th) {
    std::string out;
    for (size_t i = 0; i < results.size(); ++i) {
        HealthStep step = next(r, results[i] == 'P', th);
        if (step.transition) {
            CHECK(*step.transition == step.record.state);
            out += fmt::format("{}{}@{}", out.empty() ? "" : " ", to_string(*step.transition), i);
        } else {
            CHECK(step.record.state == r.state);
        }
        r = step.record;
    }
    return out;
}

}  // namespace

TEST_CASE("policy: initial") {
    const Thresholds th{5, 3};
    SUBCASE("the first pass makes a new target healthy at once, whatever the threshold") {
        for (unsigned streak = 0; streak < 3; ++streak) {
            HealthStep s = next(rec(HealthState::initial, streak), true, th);
            REQUIRE(s.transition);
            CHECK(*s.transition == HealthState::healthy);
            CHECK(s.record == rec(HealthState::healthy, 0));
        }
    }
    SUBCASE("failures count up to unhealthy_threshold, then unhealthy") {
        HealthStep s = next(rec(HealthState::initial, 0), false, th);
        CHECK_FALSE(s.transition);
        CHECK(s.record == rec(HealthState::initial, 1));
        s = next(s.record, false, th);
        CHECK(s.record == rec(HealthState::initial, 2));
        s = next(s.record, false, th);
        REQUIRE(s.transition);
        CHECK(*s.transition == HealthState::unhealthy);
        CHECK(s.record == rec(HealthState::unhealthy, 0));
    }
    SUBCASE("routable_while_initial survives every step") {
        HealthStep s = next(rec(HealthState::initial, 0, true), false, th);
        CHECK(s.record.routable_while_initial);
        s = next(s.record, true, th);
        CHECK(s.record.routable_while_initial);
    }
}

TEST_CASE("policy: healthy") {
    const Thresholds th{4, 3};
    for (unsigned streak = 0; streak < 3; ++streak) {
        CAPTURE(streak);
        HealthStep pass = next(rec(HealthState::healthy, streak), true, th);
        CHECK_FALSE(pass.transition);
        CHECK(pass.record == rec(HealthState::healthy, 0));  // a pass breaks the run
        HealthStep fail = next(rec(HealthState::healthy, streak), false, th);
        if (streak + 1 >= 3) {
            REQUIRE(fail.transition);
            CHECK(*fail.transition == HealthState::unhealthy);
            CHECK(fail.record == rec(HealthState::unhealthy, 0));
        } else {
            CHECK_FALSE(fail.transition);
            CHECK(fail.record == rec(HealthState::healthy, streak + 1));
        }
    }
}

TEST_CASE("policy: unhealthy") {
    const Thresholds th{4, 3};
    for (unsigned streak = 0; streak < 4; ++streak) {
        CAPTURE(streak);
        HealthStep fail = next(rec(HealthState::unhealthy, streak), false, th);
        CHECK_FALSE(fail.transition);
        CHECK(fail.record == rec(HealthState::unhealthy, 0));
        HealthStep pass = next(rec(HealthState::unhealthy, streak), true, th);
        if (streak + 1 >= 4) {
            REQUIRE(pass.transition);
            CHECK(*pass.transition == HealthState::healthy);
            CHECK(pass.record == rec(HealthState::healthy, 0));
        } else {
            CHECK_FALSE(pass.transition);
            CHECK(pass.record == rec(HealthState::unhealthy, streak + 1));
        }
    }
}

TEST_CASE("policy: draining ignores checks") {
    for (bool passed : {true, false}) {
        HealthStep s = next(rec(HealthState::draining, 2), passed, Thresholds{2, 2});
        CHECK_FALSE(s.transition);
        CHECK(s.record == rec(HealthState::draining, 0));
    }
}

TEST_CASE("policy: sequences, NLB defaults and the extremes of the ranges") {
    CHECK(run(rec(HealthState::initial), "P", {5, 2}) == "healthy@0");
    CHECK(run(rec(HealthState::initial), "FFPPPPP", {5, 2}) == "unhealthy@1 healthy@6");
    CHECK(run(rec(HealthState::initial), "FPF", {5, 2}) == "healthy@1");
    // Flapping never accumulates: every disagreeing run is broken before it counts.
    CHECK(run(rec(HealthState::healthy), "FPFPFPFP", {2, 2}) == "");
    CHECK(run(rec(HealthState::unhealthy), "PFPFPFPF", {2, 2}) == "");
    CHECK(run(rec(HealthState::healthy),
              "FF"
              "PPPPPPPPP"
              "P",
              {10, 2}) == "unhealthy@1 healthy@11");
    CHECK(run(rec(HealthState::healthy),
              "FFFFFFFFF"
              "F",
              {2, 10}) == "unhealthy@9");
    CHECK(run(rec(HealthState::healthy), "FFPFF", {2, 2}) == "unhealthy@1");
    CHECK(run(rec(HealthState::healthy), "FFPPFF", {2, 2}) == "unhealthy@1 healthy@3 unhealthy@5");
}

TEST_CASE("policy: passive failures") {
    for (HealthState s : {HealthState::initial, HealthState::healthy}) {
        HealthStep step = passive_failure(rec(s, 1, true));
        REQUIRE(step.transition);
        CHECK(*step.transition == HealthState::unhealthy);
        CHECK(step.record == rec(HealthState::unhealthy, 0, true));
    }
    HealthStep recovering = passive_failure(rec(HealthState::unhealthy, 1));
    CHECK_FALSE(recovering.transition);
    CHECK(recovering.record == rec(HealthState::unhealthy, 0));  // recovery starts over
    HealthStep draining = passive_failure(rec(HealthState::draining, 0));
    CHECK_FALSE(draining.transition);
    CHECK(draining.record.state == HealthState::draining);
}

TEST_CASE("routable") {
    CHECK(routable(rec(HealthState::healthy)));
    CHECK_FALSE(routable(rec(HealthState::unhealthy)));
    CHECK_FALSE(routable(rec(HealthState::draining)));
    CHECK_FALSE(routable(rec(HealthState::initial)));
    CHECK(routable(rec(HealthState::initial, 0, true)));
    CHECK_FALSE(routable(rec(HealthState::unhealthy, 0, true)));
}

// ---------------------------------------------------------------------------------
// minimum_healthy_targets: required_healthy and fails_open.

TEST_CASE("minimum healthy: the NLB's defaults fail open only when none is healthy") {
    const MinimumHealthyTargets defaults;
    CHECK(defaults.count == 1);
    CHECK_FALSE(defaults.percentage.has_value());
    for (size_t n = 0; n <= 50; ++n) {
        CHECK(required_healthy(defaults, n) == 1);
        for (size_t healthy = 0; healthy <= n; ++healthy) {
            CHECK(fails_open(defaults, healthy, n) == (healthy == 0 && n > 0));
        }
    }
}

TEST_CASE("minimum healthy: count") {
    SUBCASE("4 targets, count 3: one down routes around it, two down fail open") {
        const MinimumHealthyTargets m{3, std::nullopt};
        CHECK(required_healthy(m, 4) == 3);
        CHECK_FALSE(fails_open(m, 4, 4));
        CHECK_FALSE(fails_open(m, 3, 4));
        CHECK(fails_open(m, 2, 4));
        CHECK(fails_open(m, 1, 4));
        CHECK(fails_open(m, 0, 4));
    }
    SUBCASE("a count above the group's size: any unhealthy target fails it open") {
        const MinimumHealthyTargets m{5, std::nullopt};
        CHECK(required_healthy(m, 3) == 5);
        CHECK_FALSE(fails_open(m, 3, 3));  // all healthy: routing to all changes nothing
        CHECK(fails_open(m, 2, 3));
        CHECK(fails_open(m, 0, 3));
    }
    SUBCASE("exhaustively: below the count and not all healthy") {
        for (unsigned count = 1; count <= 12; ++count) {
            const MinimumHealthyTargets m{count, std::nullopt};
            for (size_t n = 0; n <= 12; ++n) {
                CHECK(required_healthy(m, n) == count);
                for (size_t healthy = 0; healthy <= n; ++healthy) {
                    CHECK(fails_open(m, healthy, n) == (healthy < count && healthy < n));
                }
            }
        }
    }
}

TEST_CASE("minimum healthy: a percentage rounds up to whole targets") {
    auto percent = [](unsigned p) { return MinimumHealthyTargets{1, p}; };
    CHECK(required_healthy(percent(50), 3) == 2);  // 1.5 targets: 1 healthy is 33%, below 50%
    CHECK(required_healthy(percent(50), 4) == 2);  // exactly 50% meets it
    CHECK(required_healthy(percent(75), 4) == 3);
    CHECK(required_healthy(percent(76), 4) == 4);
    CHECK(required_healthy(percent(1), 1000) == 10);
    CHECK(required_healthy(percent(1), 1001) == 11);
    CHECK(required_healthy(percent(100), 7) == 7);
    CHECK(required_healthy(percent(1), 3) == 1);  // never below the count
    CHECK(required_healthy(percent(50), 0) == 1);
    CHECK_FALSE(fails_open(percent(50), 2, 4));
    CHECK(fails_open(percent(50), 1, 3));
    CHECK_FALSE(fails_open(percent(50), 2, 3));
    CHECK(fails_open(percent(100), 6, 7));
    CHECK_FALSE(fails_open(percent(100), 7, 7));

    SUBCASE("exhaustively: healthy * 100 < P * N is what fails open") {
        for (unsigned p = 1; p <= 100; ++p) {
            for (size_t n = 1; n <= 30; ++n) {
                const size_t required = required_healthy(percent(p), n);
                CHECK(required * 100 >= p * n);       // the share is met...
                CHECK((required - 1) * 100 < p * n);  // ...by the fewest targets that meet it
                for (size_t healthy = 0; healthy <= n; ++healthy) {
                    const bool below = healthy * 100 < p * n;
                    CHECK(fails_open(percent(p), healthy, n) == (below && healthy < n));
                }
            }
        }
    }
}

TEST_CASE("minimum healthy: with both, either one not met fails open") {
    const MinimumHealthyTargets both{2, 50};
    CHECK(required_healthy(both, 2) == 2);   // the count asks more
    CHECK(required_healthy(both, 10) == 5);  // the percentage asks more
    CHECK(fails_open(both, 1, 2));
    CHECK_FALSE(fails_open(both, 2, 3));
    CHECK(fails_open(both, 4, 10));
    CHECK_FALSE(fails_open(both, 5, 10));
    for (unsigned count = 1; count <= 8; ++count) {
        for (unsigned p : {1U, 10U, 33U, 50U, 67U, 99U, 100U}) {
            for (size_t n = 0; n <= 16; ++n) {
                for (size_t healthy = 0; healthy <= n; ++healthy) {
                    const bool either = fails_open({count, std::nullopt}, healthy, n) ||
                                        fails_open({1, p}, healthy, n);
                    CHECK(fails_open({count, p}, healthy, n) == either);
                }
            }
        }
    }
}

TEST_CASE("minimum healthy: an empty group, or none in service, never fails open") {
    for (unsigned count = 1; count <= 5; ++count) {
        CHECK_FALSE(fails_open({count, std::nullopt}, 0, 0));
        CHECK_FALSE(fails_open({count, 100}, 0, 0));
    }
}

TEST_CASE("minimum healthy: to_string names the thresholds as the config does") {
    CHECK(to_string(MinimumHealthyTargets{}) == "count 1");
    CHECK(to_string(MinimumHealthyTargets{3, std::nullopt}) == "count 3");
    CHECK(to_string(MinimumHealthyTargets{1, 50}) == "count 1, percentage 50%");
}

TEST_CASE("to_string(HealthState)") {
    CHECK(to_string(HealthState::initial) == "initial");
    CHECK(to_string(HealthState::healthy) == "healthy");
    CHECK(to_string(HealthState::unhealthy) == "unhealthy");
    CHECK(to_string(HealthState::draining) == "draining");
}

// ---------------------------------------------------------------------------------

namespace {

std::string parsed(std::string_view in) {
    StatusLine s = parse_status_line(in);
    switch (s.result) {
        case StatusLine::Result::incomplete:
            return "incomplete";
        case StatusLine::Result::ok:
            return std::to_string(s.code);
        case StatusLine::Result::malformed:
            return fmt::format("malformed: {}", s.problem);
    }
    return "?";
}

}  // namespace

TEST_CASE("status line: well formed") {
    CHECK(parsed("HTTP/1.1 200 OK\r\n") == "200");
    CHECK(parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == "200");
    CHECK(parsed("HTTP/1.0 503 Service Unavailable\r\n") == "503");
    CHECK(parsed("HTTP/1.1 204 \r\n") == "204");         // empty reason
    CHECK(parsed("HTTP/1.1 302\r\n") == "302");          // reason left out
    CHECK(parsed("HTTP/1.1 404 Not Found\n") == "404");  // bare LF
    CHECK(parsed("HTTP/2.0 599 x\tz\r\n") == "599");
    CHECK(parsed("HTTP/1.1 100 Continue\r\n") == "100");
}

TEST_CASE("status line: every prefix of a valid line is incomplete") {
    const std::string line = "HTTP/1.1 503 Service Unavailable\r\n";
    for (size_t n = 0; n < line.size(); ++n) {
        CAPTURE(n);
        CHECK(parsed(line.substr(0, n)) == "incomplete");
    }
    CHECK(parsed(line) == "503");
}

TEST_CASE("status line: malformed") {
    CHECK(parsed("SSH-2.0-OpenSSH\r\n") == "malformed: response does not start with \"HTTP/\"");
    CHECK(parsed("http/1.1 200 OK\r\n") == "malformed: response does not start with \"HTTP/\"");
    CHECK(parsed("H") == "incomplete");
    CHECK(parsed("HX") == "malformed: response does not start with \"HTTP/\"");
    CHECK(parsed("<html>") == "malformed: response does not start with \"HTTP/\"");
    CHECK(parsed("HTTP/x.1 200 OK\r\n") == "malformed: bad HTTP version");
    CHECK(parsed("HTTP/1,1 200 OK\r\n") == "malformed: bad HTTP version");
    CHECK(parsed("HTTP/1.x 200 OK\r\n") == "malformed: bad HTTP version");
    CHECK(parsed("HTTP/1.1  200 OK\r\n") == "malformed: status code is not three digits");
    CHECK(parsed("HTTP/1.1200 OK\r\n") == "malformed: expected a space after the HTTP version");
    CHECK(parsed("HTTP/1.1 20 OK\r\n") == "malformed: status code is not three digits");
    CHECK(parsed("HTTP/1.1 2000 OK\r\n") == "malformed: status code is not three digits");
    CHECK(parsed("HTTP/1.1 2x0 OK\r\n") == "malformed: status code is not three digits");
    CHECK(parsed("HTTP/1.1 099 OK\r\n") == "malformed: status code below 100");
    CHECK(parsed("HTTP/1.1 200 OK\rX") == "malformed: CR not followed by LF");
    CHECK(parsed("HTTP/1.1 200 O\x01K\r\n") == "malformed: control character in the reason phrase");
    CHECK(parsed(std::string_view("HTTP/1.1 200 \0K\r\n", 17)) ==
          "malformed: control character in the reason phrase");
    CHECK(parsed("HTTP/1.1 200\r\r\n") == "malformed: CR not followed by LF");
    // A line that never ends must not be "incomplete" forever.
    const std::string endless = "HTTP/1.1 200 " + std::string(kMaxStatusLine, 'x');
    CHECK(parsed(endless) == "malformed: status line too long");
    CHECK(parsed(endless.substr(0, kMaxStatusLine)) == "malformed: status line too long");
    CHECK(parsed(endless.substr(0, kMaxStatusLine - 1)) == "incomplete");
}

// ---------------------------------------------------------------------------------

namespace {

Matcher matcher(std::string_view text) {
    auto m = parse_matcher(text);
    if (auto* problem = std::get_if<std::string>(&m)) FAIL(*problem);
    return std::get<Matcher>(m);
}

std::string matcher_error(std::string_view text) {
    auto m = parse_matcher(text);
    if (auto* problem = std::get_if<std::string>(&m)) return *problem;
    return "<valid>";
}

}  // namespace

TEST_CASE("matcher: forms the NLB accepts") {
    Matcher single = matcher("200");
    CHECK(single.matches(200));
    CHECK_FALSE(single.matches(201));
    CHECK(single.text() == "200");

    Matcher range = matcher("200-399");
    CHECK_FALSE(range.matches(199));
    CHECK(range.matches(200));
    CHECK(range.matches(302));
    CHECK(range.matches(399));
    CHECK_FALSE(range.matches(400));
    CHECK_FALSE(range.matches(500));

    Matcher list = matcher("200,202,300-399");
    CHECK(list.matches(200));
    CHECK_FALSE(list.matches(201));
    CHECK(list.matches(202));
    CHECK(list.matches(350));
    CHECK_FALSE(list.matches(400));
    CHECK(list.ranges().size() == 3);

    CHECK(matcher(" 200 , 204 ").matches(204));  // spaces around entries are tolerated
    CHECK(matcher("200-200").matches(200));
    CHECK(matcher("599").matches(599));
    CHECK(matcher("200-599").matches(503));
    CHECK_FALSE(Matcher().matches(200));
}

TEST_CASE("matcher: rejections") {
    const std::string hint =
        "; expected codes and ranges such as \"200\", \"200-399\" or \"200,202,300-399\"";
    CHECK(matcher_error("") == "empty" + hint);
    CHECK(matcher_error("  ") == "empty" + hint);
    CHECK(matcher_error("200,") == "empty entry in \"200,\"" + hint);
    CHECK(matcher_error(",200") == "empty entry in \",200\"" + hint);
    CHECK(matcher_error("200,,300") == "empty entry in \"200,,300\"" + hint);
    CHECK(matcher_error("OK") == "\"OK\" is not an HTTP status code" + hint);
    CHECK(matcher_error("2xx") == "\"2xx\" is not an HTTP status code" + hint);
    CHECK(matcher_error("+200") == "\"+200\" is not an HTTP status code" + hint);
    CHECK(matcher_error("-200") == "\"\" is not an HTTP status code" + hint);
    CHECK(matcher_error("200-") == "\"\" is not an HTTP status code" + hint);
    CHECK(matcher_error("200-300-400") == "\"300-400\" is not an HTTP status code" + hint);
    CHECK(matcher_error("199") == "code 199 is outside 200-599" + hint);
    CHECK(matcher_error("600") == "code 600 is outside 200-599" + hint);
    CHECK(matcher_error("200-600") == "code 600 is outside 200-599" + hint);
    CHECK(matcher_error("100-200") == "code 100 is outside 200-599" + hint);
    CHECK(matcher_error("399-200") == "range \"399-200\" is backwards; write the lower code first");
}

// ---------------------------------------------------------------------------------

TEST_CASE("HealthCheckConfig defaults are the NLB's") {
    HealthCheckConfig hc;
    CHECK(hc.enabled);
    CHECK(hc.protocol == HealthProtocol::tcp);
    CHECK_FALSE(hc.port.has_value());
    CHECK(hc.path == "/");
    CHECK(hc.interval == Duration{30000});
    CHECK(hc.effective_timeout() == Duration{10000});
    CHECK(hc.healthy_threshold == 5);
    CHECK(hc.unhealthy_threshold == 2);
    CHECK(hc.matcher.text() == "200-399");
    hc.protocol = HealthProtocol::http;
    CHECK(hc.effective_timeout() == Duration{6000});
    hc.interval = Duration{1000};  // below the default timeout: half the interval
    CHECK(hc.effective_timeout() == Duration{500});
    hc.timeout = Duration{300};
    CHECK(hc.effective_timeout() == Duration{300});
}
