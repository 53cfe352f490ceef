// Shared fixtures for the configuration tests (tests/unit/test_config_*.cpp): texts
// in, the exact error line out, and a small valid Config as quick mode builds one.
#pragma once

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <string>
#include <string_view>
#include <vector>

#include "stickyd/config.hpp"

namespace stickyd::test {

// Raw-string documents start with a newline so that their first line is line 1.
inline std::string_view doc(std::string_view text) {
    if (!text.empty() && text.front() == '\n') text.remove_prefix(1);
    return text;
}

// The error line parse_config reports, or "<loaded>".
inline std::string error_of(std::string_view text) {
    auto result = parse_config(doc(text), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) return error->to_string();
    return "<loaded>";
}

inline Config loaded(std::string_view text) {
    auto result = parse_config(doc(text), "t.toml");
    if (auto* error = std::get_if<ConfigError>(&result)) FAIL(error->to_string());
    return std::get<Config>(result);
}

inline SocketAddress addr(std::string_view text) {
    auto parsed = SocketAddress::parse(text);
    REQUIRE(parsed.has_value());
    return *parsed;
}

// A listener and group "web" (`group_keys` added to its table) with `count`
// targets of `weight` at 10.0.x.y:80; the first target's table is on line 7, or
// later by the lines of group_keys.
inline std::string many_targets(const std::string& group_keys, int count, int weight) {
    std::string text =
        "[[listener]]\nbind = \"127.0.0.1:8000\"\ntarget_group = \"web\"\n\n[[target_group]]\n"
        "name = \"web\"\n" +
        group_keys;
    for (int i = 0; i < count; ++i) {
        text += fmt::format("[[target_group.target]]\naddress = \"10.0.{}.{}:80\"\nweight = {}\n",
                            i / 256, i % 256, weight);
    }
    return text;
}

// A small valid in-memory config, as the command-line quick mode builds one.
inline Config cli_config() {
    Config config;
    TargetGroupConfig group;
    group.name = "default";
    group.targets.push_back({"127.0.0.1:9001", addr("127.0.0.1:9001"), 1});
    group.targets.push_back({"127.0.0.1:9002", addr("127.0.0.1:9002"), 1});
    config.target_groups.push_back(group);
    config.listeners.push_back({"127.0.0.1:8000", addr("127.0.0.1:8000"), "default"});
    return config;
}

inline std::string validate_error(const Config& config) {
    auto error = validate(config, "<command line>");
    return error ? error->to_string() : "<valid>";
}

inline std::string write_temp(std::string_view text) {
    char path[] = "/tmp/stickyd-test-config-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    ::close(fd);
    return path;
}

constexpr std::string_view kMinimal = R"(
[[listener]]
bind = "127.0.0.1:8000"
target_group = "web"

[[target_group]]
name = "web"

[[target_group.target]]
address = "127.0.0.1:9001"
)";

// A config text and the exact error line parse_config must give for it.
struct Rejection {
    std::string toml;
    std::string error;
};

// Checks each text's error line, naming the text when one differs.
inline void expect_errors(const std::vector<Rejection>& cases) {
    for (const Rejection& c : cases) {
        CAPTURE(c.toml);
        CHECK(error_of(c.toml) == c.error);
    }
}

}  // namespace stickyd::test
