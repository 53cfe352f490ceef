// Key paths, positions, the wording many errors share, and ConfigError's one line.
#include "core/config/diagnostics.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "stickyd/words.hpp"

namespace stickyd::config_detail {

// ---------------------------------------------------------------------------------
// Did-you-mean (the distance and the choice live in words.hpp, shared with the
// command lines).

std::string did_you_mean(std::string_view word, std::span<const std::string_view> candidates) {
    auto match = closest_match(word, candidates);
    return match ? fmt::format(" (did you mean {:?}?)", *match) : std::string();
}

std::string quoted_list(std::span<const std::string_view> items) {
    std::string out;
    for (auto item : items) out += fmt::format("{}{:?}", out.empty() ? "" : ", ", item);
    return out;
}

std::string choice_message(std::string_view got, std::span<const std::string_view> choices) {
    return fmt::format("must be one of {}, got {:?}{}", quoted_list(choices), got,
                       did_you_mean(got, choices));
}

// ---------------------------------------------------------------------------------
// Addresses.

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

namespace {

bool has_letter(std::string_view s) {
    return std::any_of(s.begin(), s.end(),
                       [](char c) { return std::isalpha(static_cast<unsigned char>(c)); });
}

std::optional<std::string> port_problem(std::string_view port) {
    if (port.empty()) return "missing port after ':'";
    if (!all_digits(port)) return fmt::format("port {:?} is not a number", port);
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || value == 0 || value > 65535) {
        return fmt::format("port {} is out of range 1-65535", port);
    }
    if (port.front() == '0') return fmt::format("port {:?} has a leading zero", port);
    return std::nullopt;
}

std::string host_problem(std::string_view host, bool bracketed) {
    if (bracketed) {
        in6_addr v6{};
        if (!parse_ip_bytes(AF_INET6, host, &v6)) {
            return fmt::format("{:?} is not an IPv6 address", host);
        }
        return "not a valid address";
    }
    in_addr v4{};
    if (host.empty()) return "missing IP address before ':'";
    if (parse_ip_bytes(AF_INET, host, &v4)) return "not a valid address";
    if (has_letter(host)) {
        return fmt::format(
            "{:?} is a host name; an IP address is required (names are not resolved)", host);
    }
    return fmt::format("{:?} is not an IPv4 address", host);
}

// Names what is wrong with text that SocketAddress::parse rejected, so the user is not
// left to guess between a missing port, a host name and missing brackets.
std::string address_problem(std::string_view text) {
    if (text.empty()) return "empty";
    std::string_view host;
    std::string_view port;
    const bool bracketed = text.front() == '[';
    if (bracketed) {
        auto close = text.find(']');
        if (close == std::string_view::npos) return "missing ']' after the IPv6 address";
        auto rest = text.substr(close + 1);
        if (rest.empty()) return "missing :port after ']'";
        if (rest.front() != ':') return "expected ':' and a port after ']'";
        host = text.substr(1, close - 1);
        port = rest.substr(1);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return "missing :port";
        if (text.find(':') != colon) return "an IPv6 address needs brackets, as in [::1]:9001";
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    if (auto problem = port_problem(port)) return *problem;
    return host_problem(host, bracketed);
}

}  // namespace

std::string bad_address_message(std::string_view text, std::string_view example) {
    return fmt::format("{:?}: {}; expected ip:port such as {}", text, address_problem(text),
                       example);
}

// ---------------------------------------------------------------------------------
// Key paths and positions.
Position position_of(const toml::source_region& region) {
    return {static_cast<unsigned>(region.begin.line), static_cast<unsigned>(region.begin.column)};
}

bool is_bare_key_character(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
}

namespace {

bool is_bare_key(std::string_view key) {
    return !key.empty() && std::all_of(key.begin(), key.end(), is_bare_key_character);
}

}  // namespace

std::string join_key(std::string_view parent, std::string_view key) {
    std::string k = is_bare_key(key) ? std::string(key) : fmt::format("{:?}", key);
    return parent.empty() ? k : fmt::format("{}.{}", parent, k);
}

std::string index_key(std::string_view parent, size_t index) {
    return fmt::format("{}[{}]", parent, index);
}
}  // namespace stickyd::config_detail

namespace stickyd {

std::string ConfigError::to_string() const {
    std::string out = source;
    if (line != 0) {
        out += fmt::format(":{}", line);
        if (column != 0) out += fmt::format(":{}", column);
    }
    if (!key_path.empty()) out += fmt::format(": {}", key_path);
    out += fmt::format(": {}", message);
    return out;
}

}  // namespace stickyd
