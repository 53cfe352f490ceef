// The configuration loader: TOML text -> Config, every problem reported as one line
// that names the file position and key path of the offending value.
//
// Two layers share one set of rules:
//   * the TOML reader checks shape (known keys, types, keywords, and the ranges a value
//     must satisfy before it fits its field) and records where every key was found;
//   * validate() checks the Config as a whole (ranges again, duplicates, references,
//     the maglev table). The command-line quick mode builds a Config in memory and
//     calls validate() too, so a flag and a file can never disagree about what is valid.
#include "stickyd/config.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <initializer_list>
#include <map>
#include <span>

#include "stickyd/balancer.hpp"
#include "stickyd/ip_prefix.hpp"
#include "stickyd/words.hpp"

namespace stickyd {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------
// Rules: one definition each, used by the reader and by validate().

struct IntRange {
    int64_t min;
    int64_t max;
    std::string_view note;  // appended to the range, e.g. what a special value means
    bool contains(int64_t v) const { return v >= min && v <= max; }
};

constexpr IntRange kThreadsRange{0, 256, " (0 = one per online CPU)"};
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
constexpr std::string_view kDnsExample = "\"app-headless.default.svc.cluster.local:8080\"";
constexpr size_t kMaxHealthPath = 1024;  // as the NLB's HealthCheckPath

constexpr std::string_view kTargetExample = "127.0.0.1:9001 or [::1]:9001";
constexpr std::string_view kBindExample = "127.0.0.1:8000 or [::]:8000";
constexpr std::string_view kPrefixListExample = "[\"10.0.0.0/8\", \"2001:db8::/32\"]";
constexpr std::string_view kDurationHint =
    "expected a duration such as \"2s\" or \"500ms\" (units ms, s, m, h; a bare integer means "
    "seconds)";

constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error"};
constexpr std::string_view kAlgorithms[] = {"ring", "maglev"};
constexpr std::string_view kHealthProtocols[] = {"tcp", "http", "https"};

std::string bad_dns_message(std::string_view text) {
    return fmt::format("expected \"NAME:PORT\" such as {}, got {:?}", kDnsExample, text);
}

std::string int_range_message(const IntRange& range, std::string_view got) {
    return fmt::format("must be an integer from {} to {}{}, got {}", range.min, range.max,
                       range.note, got);
}

std::optional<std::string> check_int(int64_t value, const IntRange& range) {
    if (range.contains(value)) return std::nullopt;
    return int_range_message(range, std::to_string(value));
}

// The shortest exact spelling, so messages echo what a user would have written.
std::string format_duration(Duration d) {
    auto ms = d.count();
    if (ms == 0) return "0s";
    if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
    if (ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
    if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
    return fmt::format("{}ms", ms);
}

std::optional<std::string> check_duration(Duration value, const DurationRange& range) {
    if (value >= range.min && value <= range.max) return std::nullopt;
    return fmt::format("must be a duration from {} to {}, got {}", format_duration(range.min),
                       format_duration(range.max), format_duration(value));
}

// Target group names end up in metrics labels and admin URLs: keep them plain.
bool is_valid_group_name(std::string_view name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
    });
}

// Target ids and listener names are printed bare in log lines and stickyctl tables,
// typed as stickyctl arguments, and put into metrics labels and JSON: a control
// character could forge a log line, and a space, quote or backslash would need
// quoting somewhere. Every address ("[::1]:9001") is one, so default ids are too.
constexpr std::string_view kNameRule =
    "must be printable ASCII without spaces, quotes or backslashes";

bool is_valid_name(std::string_view name) {
    return std::all_of(name.begin(), name.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > ' ' && u < 0x7f && c != '"' && c != '\\';
    });
}

bool has_control_character(std::string_view text) {
    return std::any_of(text.begin(), text.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}

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

std::string bad_address_message(std::string_view text, std::string_view example) {
    return fmt::format("{:?}: {}; expected ip:port such as {}", text, address_problem(text),
                       example);
}

// ---------------------------------------------------------------------------------
// Key paths and positions.

struct Position {
    unsigned line = 0;
    unsigned column = 0;
};

Position position_of(const toml::source_region& region) {
    return {static_cast<unsigned>(region.begin.line), static_cast<unsigned>(region.begin.column)};
}

bool is_bare_key_character(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
}

bool is_bare_key(std::string_view key) {
    return !key.empty() && std::all_of(key.begin(), key.end(), is_bare_key_character);
}

std::string join_key(std::string_view parent, std::string_view key) {
    std::string k = is_bare_key(key) ? std::string(key) : fmt::format("{:?}", key);
    return parent.empty() ? k : fmt::format("{}.{}", parent, k);
}

std::string index_key(std::string_view parent, size_t index) {
    return fmt::format("{}[{}]", parent, index);
}

// Where each key path was found in the file. A lookup falls back to the nearest
// recorded ancestor, so a missing or defaulted key is reported at the table that
// should have held it. Empty for a Config built in memory: every position is 0.
class PositionMap {
  public:
    void record(std::string path, Position position) {
        map_.insert_or_assign(std::move(path), position);
    }

    Position find(std::string_view path) const {
        std::string p(path);
        while (!p.empty()) {
            if (auto it = map_.find(p); it != map_.end()) return it->second;
            auto cut = p.find_last_of(".[");
            if (cut == std::string::npos) break;
            p.resize(cut);
        }
        return {};
    }

  private:
    std::map<std::string, Position, std::less<>> map_;
};

// Keeps the first error only. Readers carry on with defaults after a failure instead
// of threading an error through every return; the first problem is the one reported.
class Diagnostics {
  public:
    explicit Diagnostics(std::string_view source) : source_(source) {}

    PositionMap& positions() { return positions_; }

    void fail(std::string_view path, std::string message) {
        fail_at(path, positions_.find(path), std::move(message));
    }

    void fail_at(std::string_view path, Position position, std::string message) {
        if (error_) return;
        error_ = ConfigError{source_, position.line, position.column, std::string(path),
                             std::move(message)};
    }

    bool failed() const { return error_.has_value(); }
    std::optional<ConfigError> take() { return std::move(error_); }

    // " at line N" when the file position of `path` is known, for "the first one is
    // there" hints in duplicate errors.
    std::string at_line(std::string_view path) const {
        auto line = positions_.find(path).line;
        return line == 0 ? std::string() : fmt::format(" at line {}", line);
    }

  private:
    std::string source_;
    PositionMap positions_;
    std::optional<ConfigError> error_;
};

// ---------------------------------------------------------------------------------
// The TOML reader.

std::string describe(const toml::node& node) {
    switch (node.type()) {
        case toml::node_type::string:
            return fmt::format("string {:?}", node.as_string()->get());
        case toml::node_type::integer:
            return fmt::format("integer {}", node.as_integer()->get());
        case toml::node_type::floating_point:
            return fmt::format("floating-point {}", node.as_floating_point()->get());
        case toml::node_type::boolean:
            return fmt::format("boolean {}", node.as_boolean()->get());
        case toml::node_type::table:
            return "table";
        case toml::node_type::array:
            return "array";
        case toml::node_type::date:
            return "date";
        case toml::node_type::time:
            return "time";
        case toml::node_type::date_time:
            return "date-time";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

// Whole seconds, as NLB attributes are written; nullopt if negative or too large.
std::optional<Duration> seconds_to_duration(int64_t seconds) {
    if (seconds < 0 || seconds > Duration::max().count() / 1000) return std::nullopt;
    return Duration(seconds * 1000);
}

// Reads one TOML table. The constructor rejects keys the table does not define (naming
// the closest one that it does), then values are taken by key, each read recording
// where it was found. A new subtable, such as [target_group.health_check], is one more
// known key in its parent plus one read_* function for its contents.
class TableReader {
  public:
    TableReader(Diagnostics& diag, const toml::table& table, std::string path,
                std::initializer_list<std::string_view> known)
        : diag_(diag), table_(table), path_(std::move(path)), known_(known) {
        if (!path_.empty()) diag_.positions().record(path_, position_of(table.source()));
        reject_unknown_keys();
    }

    std::string path_of(std::string_view key) const { return join_key(path_, key); }
    bool has(std::string_view key) const { return table_.contains(key); }

    void invalid(std::string_view key, std::string message) {
        diag_.fail(path_of(key), std::move(message));
    }

    // Reported at the table, since the key has no position of its own. Called after
    // the values are read, so a present but wrong value is reported first.
    void require(std::string_view key, std::string_view example) {
        if (!has(key)) invalid(key, fmt::format("missing required key (e.g. {})", example));
    }

    std::optional<std::string> string(std::string_view key) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        if (auto* s = node->as_string()) return s->get();
        invalid(key, fmt::format("expected a string, got {}", describe(*node)));
        return std::nullopt;
    }

    std::optional<bool> boolean(std::string_view key) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        if (auto* b = node->as_boolean()) return b->get();
        invalid(key, fmt::format("expected true or false, got {}", describe(*node)));
        return std::nullopt;
    }

    std::optional<int64_t> integer(std::string_view key, const IntRange& range) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        auto* i = node->as_integer();
        if (!i) {
            invalid(key, int_range_message(range, describe(*node)));
            return std::nullopt;
        }
        if (auto problem = check_int(i->get(), range)) {
            invalid(key, *problem);
            return std::nullopt;
        }
        return i->get();
    }

    std::optional<Duration> duration(std::string_view key, const DurationRange& range) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        std::optional<Duration> value;
        if (auto* i = node->as_integer()) value = seconds_to_duration(i->get());
        if (auto* s = node->as_string()) value = parse_duration(s->get());
        if (!value) {
            invalid(key, fmt::format("{}, got {}", kDurationHint, describe(*node)));
            return std::nullopt;
        }
        if (auto problem = check_duration(*value, range)) {
            invalid(key, *problem);
            return std::nullopt;
        }
        return value;
    }

    std::optional<SocketAddress> address(std::string_view key, std::string_view example) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        auto* s = node->as_string();
        if (!s) {
            invalid(key, fmt::format("expected a string \"ip:port\" such as {}, got {}", example,
                                     describe(*node)));
            return std::nullopt;
        }
        auto parsed = SocketAddress::parse(s->get());
        if (!parsed) invalid(key, bad_address_message(s->get(), example));
        return parsed;
    }

    // An array of CIDR prefixes (allow, deny); a bad element is reported at its own
    // position, as key[i].
    std::optional<std::vector<IpPrefix>> prefixes(std::string_view key) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        auto* array = node->as_array();
        if (!array) {
            invalid(key, fmt::format("expected an array of CIDR prefixes such as {}, got {}",
                                     kPrefixListExample, describe(*node)));
            return std::nullopt;
        }
        std::vector<IpPrefix> out;
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& element = (*array)[i];
            const std::string path = index_key(path_of(key), i);
            const Position position = position_of(element.source());
            auto* text = element.as_string();
            if (!text) {
                diag_.fail_at(path, position,
                              fmt::format("expected a string such as \"10.0.0.0/8\", got {}",
                                          describe(element)));
                return std::nullopt;
            }
            auto parsed = parse_prefix(text->get());
            if (auto* problem = std::get_if<std::string>(&parsed)) {
                diag_.fail_at(path, position, fmt::format("{:?}: {}", text->get(), *problem));
                return std::nullopt;
            }
            out.push_back(std::get<IpPrefix>(parsed));
        }
        return out;
    }

    // dns: one "NAME:PORT" or an array of them, each reported at its own position
    // as dns[i]. Duplicates are validation's (check_dns_names).
    std::optional<std::vector<DnsDiscoveryConfig>> dns_names(std::string_view key) {
        const toml::node* node = find(key);
        if (!node) return std::nullopt;
        if (auto* text = node->as_string()) {
            auto dns = parse_dns_name(text->get());
            if (!dns) {
                invalid(key, bad_dns_message(text->get()));
                return std::nullopt;
            }
            return std::vector{std::move(*dns)};
        }
        auto* array = node->as_array();
        if (!array) {
            invalid(key,
                    fmt::format("expected \"NAME:PORT\" such as {} or an array of them, got {}",
                                kDnsExample, describe(*node)));
            return std::nullopt;
        }
        if (array->empty()) {
            invalid(key, "an empty list names nothing to resolve; name one or remove the key");
            return std::nullopt;
        }
        std::vector<DnsDiscoveryConfig> out;
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& element = (*array)[i];
            const std::string path = index_key(path_of(key), i);
            const Position position = position_of(element.source());
            diag_.positions().record(path, position);
            auto* text = element.as_string();
            auto dns = text ? parse_dns_name(text->get()) : std::nullopt;
            if (!dns) {
                diag_.fail_at(path, position,
                              text ? bad_dns_message(text->get())
                                   : fmt::format("expected \"NAME:PORT\" such as {}, got {}",
                                                 kDnsExample, describe(element)));
                return std::nullopt;
            }
            out.push_back(std::move(*dns));
        }
        return out;
    }

    // A subtable written as `header` in the file; nullptr if absent or not a table.
    const toml::table* table(std::string_view key, std::string_view header) {
        const toml::node* node = find(key);
        if (!node) return nullptr;
        if (auto* t = node->as_table()) return t;
        invalid(key, fmt::format("expected a table ({}), got {}", header, describe(*node)));
        return nullptr;
    }

    // Calls read(table, path) for each element of an array of tables (`header`).
    template <typename Read>
    void for_each_table(std::string_view key, std::string_view header, Read read) {
        const toml::node* node = find(key);
        if (!node) return;
        auto* array = node->as_array();
        if (!array) {
            invalid(key, fmt::format("expected an array of tables ({}), got {}", header,
                                     describe(*node)));
            return;
        }
        for (size_t i = 0; i < array->size(); ++i) {
            const toml::node& element = (*array)[i];
            std::string path = index_key(path_of(key), i);
            if (auto* t = element.as_table()) {
                read(*t, path);
            } else {
                diag_.fail_at(
                    path, position_of(element.source()),
                    fmt::format("expected a table ({}), got {}", header, describe(element)));
            }
        }
    }

  private:
    const toml::node* find(std::string_view key) {
        const toml::node* node = table_.get(key);
        if (node) diag_.positions().record(path_of(key), position_of(node->source()));
        return node;
    }

    // Reports the first unknown key in file order (the table iterates sorted by name).
    void reject_unknown_keys() {
        const toml::key* first = nullptr;
        for (auto&& [key, node] : table_) {
            if (std::find(known_.begin(), known_.end(), key.str()) != known_.end()) continue;
            if (!first || key.source().begin < first->source().begin) first = &key;
        }
        if (!first) return;
        std::string hint = did_you_mean(first->str(), known_);
        if (hint.empty()) hint = fmt::format("; expected one of {}", quoted_list(known_));
        diag_.fail_at(path_of(first->str()), position_of(first->source()),
                      fmt::format("unknown key{}", hint));
    }

    Diagnostics& diag_;
    const toml::table& table_;
    std::string path_;
    std::vector<std::string_view> known_;
};

std::optional<LogLevel> read_log_level(TableReader& r, std::string_view key) {
    auto text = r.string(key);
    if (!text) return std::nullopt;
    auto level = parse_log_level(*text);
    if (!level) r.invalid(key, choice_message(*text, kLogLevels));
    return level;
}

std::optional<Algorithm> read_algorithm(TableReader& r, std::string_view key) {
    auto text = r.string(key);
    if (!text) return std::nullopt;
    if (*text == "ring") return Algorithm::ring;
    if (*text == "maglev") return Algorithm::maglev;
    r.invalid(key, choice_message(*text, kAlgorithms));
    return std::nullopt;
}

// "660" or "0660": the permission bits only (no setuid, sticky or file type bits).
std::optional<unsigned> parse_socket_mode(std::string_view text) {
    if (text.size() == 4 && text[0] == '0') text.remove_prefix(1);
    if (text.size() != 3) return std::nullopt;
    unsigned mode = 0;
    for (char c : text) {
        if (c < '0' || c > '7') return std::nullopt;
        mode = mode * 8 + static_cast<unsigned>(c - '0');
    }
    return mode;
}

GlobalConfig read_global(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path),
                  {"threads", "log_level", "shutdown_grace", "shutdown_delay", "admin_socket",
                   "admin_socket_group", "admin_socket_mode", "admin_address", "metrics_address"});
    GlobalConfig global;
    if (auto v = r.integer("threads", kThreadsRange)) global.threads = static_cast<unsigned>(*v);
    if (auto v = read_log_level(r, "log_level")) global.log_level = *v;
    if (auto v = r.duration("shutdown_grace", kShutdownGraceRange)) global.shutdown_grace = *v;
    if (auto v = r.duration("shutdown_delay", kShutdownDelayRange)) global.shutdown_delay = *v;
    if (auto v = r.string("admin_socket")) global.admin_socket = *v;
    if (auto v = r.string("admin_socket_group")) global.admin_socket_group = *v;
    if (auto v = r.string("admin_socket_mode")) {
        if (auto mode = parse_socket_mode(*v)) {
            global.admin_socket_mode = *mode;
        } else {
            r.invalid("admin_socket_mode",
                      fmt::format("must be an octal mode such as \"0660\", got {:?}", *v));
        }
    }
    if (auto v = r.address("admin_address", "\"127.0.0.1:9090\"")) global.admin_address = *v;
    if (auto v = r.address("metrics_address", "\"127.0.0.1:9100\"")) global.metrics_address = *v;
    return global;
}

ListenerConfig read_listener(Diagnostics& diag, const toml::table& table, std::string path) {
    TableReader r(diag, table, std::move(path),
                  {"name", "bind", "target_group", "idle_timeout", "accept_proxy_protocol",
                   "proxy_protocol_timeout", "access_log", "allow", "deny"});
    ListenerConfig listener;
    if (auto v = r.string("name")) listener.name = *v;
    if (auto v = r.address("bind", kBindExample)) {
        listener.bind = *v;
        if (!r.has("name")) listener.name = v->to_string();
    }
    if (auto v = r.string("target_group")) listener.target_group = *v;
    if (auto v = r.duration("idle_timeout", kIdleTimeoutRange)) listener.idle_timeout = *v;
    if (auto v = r.boolean("accept_proxy_protocol")) listener.accept_proxy_protocol = *v;
    if (auto v = r.duration("proxy_protocol_timeout", kProxyTimeoutRange)) {
        if (!listener.accept_proxy_protocol) {
            r.invalid("proxy_protocol_timeout",
                      "only applies with accept_proxy_protocol = true; set that or remove the key");
        }
        listener.proxy_protocol_timeout = *v;
    }
    if (auto v = r.boolean("access_log")) listener.access_log = *v;
    if (auto v = r.prefixes("allow")) {
        // A security group without rules admits no one; here that is more likely a
        // list left empty by a template than a wish to refuse every client.
        if (v->empty()) {
            r.invalid("allow",
                      "an empty list would refuse every client; remove the key to allow "
                      "every client, or list prefixes such as \"10.0.0.0/8\"");
        }
        listener.allow = std::move(*v);
    }
    if (auto v = r.prefixes("deny")) listener.deny = std::move(*v);
    r.require("bind", "bind = \"127.0.0.1:8000\"");
    r.require("target_group", "target_group = \"web\"");
    return listener;
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
            if (auto problem = check_int(*number, kHealthPortRange)) {
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

// "NAME:PORT" with a DNS name (letters, digits, '-', '_', '.'; labels 1-63, total
// <= 253) and a port 1-65535. An IP literal is also a name getaddrinfo resolves.
std::optional<DnsDiscoveryConfig> dns_name_of(std::string_view text) {
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

Config read_config(Diagnostics& diag, const toml::table& root) {
    TableReader r(diag, root, "", {"global", "listener", "target_group"});
    Config config;
    if (auto* t = r.table("global", "[global]")) {
        config.global = read_global(diag, *t, r.path_of("global"));
    }
    r.for_each_table("listener", "[[listener]]", [&](const toml::table& t, std::string path) {
        config.listeners.push_back(read_listener(diag, t, std::move(path)));
    });
    r.for_each_table(
        "target_group", "[[target_group]]", [&](const toml::table& t, std::string path) {
            config.target_groups.push_back(read_target_group(diag, t, std::move(path)));
        });
    return config;
}

// ---------------------------------------------------------------------------------
// What toml++ must not be given. It recurses once per nesting level while parsing
// and again while destroying the tree, so 50,000 levels overflow the stack (its own
// TOML_MAX_NESTED_VALUES covers arrays and inline tables, not dotted keys or
// headers). Version 3.3 also has undefined behaviour, fixed upstream since, on a
// table header that does not start with a key (#301) and when it asks whether some
// non-ASCII characters are whitespace (#305), on a '}' inside an array and on a
// date followed by 'T' but no time.

// No stickyd config nests deeper than about 4 levels; only broken or hostile input
// comes near this.
constexpr unsigned kMaxNesting = 32;
// A thousand targets take about 60 KiB. The cap also keeps `--check-config /dev/zero`
// from reading until memory runs out.
constexpr size_t kMaxConfigBytes = 1024 * 1024;
constexpr std::string_view kTooLarge = "larger than 1 MiB, the limit for a config file";

struct PreScanProblem {
    Position position;
    size_t line_offset;  // where the problem's line starts in the text
    std::string message;
};

// Reads TOML text just far enough to find what toml++ must not see, without
// recursing: nesting deeper than kMaxNesting, a table header whose key does not
// start right after its brackets, a non-ASCII character where toml++ asks whether
// it is whitespace, a '}' inside an array and a date-time without its time. A level is a key
// segment, a header segment, an array or an inline table; the levels of the last [header] count for
// the keys below it. Strings and comments are skipped as toml++ skips them, so their brackets and
// dots are not levels. Where invalid text could be read two ways, toml++ has stopped at an earlier
// syntax error anyway.
class PreScan {
  public:
    explicit PreScan(std::string_view text) : text_(text) {}

    std::optional<PreScanProblem> find_problem() {
        // toml++ skips a byte order mark without counting it as a column.
        if (text_.starts_with("\xef\xbb\xbf")) pos_ = 3;
        while (pos_ < text_.size() && !problem_) {
            const char c = text_[pos_];
            if (header_start_) check_header_start(c);
            if (is_non_ascii(c)) {
                // TOML has them only in strings and comments; anywhere else toml++
                // asks whether they are whitespace.
                fail("invalid TOML: a non-ASCII character outside a string or comment");
            }
            if (problem_) break;
            if (c == '#') {
                skip_comment();
            } else if ((c == '"' || c == '\'') && quote_inside_bare_text()) {
                fail("invalid TOML: a quote inside a bare key or value");
            } else if (c == '"' || c == '\'') {
                if (expect_ == Expect::key || expect_ == Expect::header) start_segment();
                skip_string(c);
            } else {
                on_char(c);
                advance();
            }
        }
        return std::move(problem_);
    }

  private:
    // What the next significant character can be: part of a key (or of a header's
    // key), part of a value, or nothing but a comment up to the end of the line.
    enum class Expect { key, header, value, line_end };

    // An open array or inline table, and the depth it was opened at.
    struct Open {
        char bracket;
        unsigned depth;
    };

    void fail(std::string message) {
        if (problem_) return;
        problem_ = PreScanProblem{{line_, column_}, line_offset_, std::move(message)};
    }

    // toml++ 3.3 hands whatever follows "[" or "[[" and spaces to its key parser,
    // which asserts (or, built with NDEBUG by clang, assumes) that a key starts
    // there: "[[[a]]]" aborted a debug build (toml++ #294, fixed upstream by #301).
    void check_header_start(char c) {
        if (c == ' ' || c == '\t') return;
        if (c == '[' && !second_bracket_) {
            second_bracket_ = true;
            return;
        }
        header_start_ = false;
        if (c == ']' || c == '"' || c == '\'' || is_bare_key_character(c)) return;
        fail("invalid TOML: expected a key after '[' in a table header");
    }

    void on_char(char c) {
        if (c == '\n') return end_line();
        switch (expect_) {
            case Expect::key:
            case Expect::header:
                return on_key_char(c);
            case Expect::value:
                return on_value_char(c);
            case Expect::line_end:
                return;
        }
    }

    void on_key_char(char c) {
        if (c == ' ' || c == '\t' || c == '\r') return;
        const bool header = expect_ == Expect::header;
        if (c == '.') {
            in_segment_ = false;
        } else if (c == '=' && !header) {
            expect_ = Expect::value;
        } else if (c == '[' && header) {
            // The second bracket of [[array.of.tables]].
        } else if (c == '[' && open_.empty() && !in_segment_ && depth_ == table_depth_) {
            expect_ = Expect::header;
            depth_ = 0;
            header_start_ = true;
            second_bracket_ = false;
        } else if (c == ']' && header) {
            table_depth_ = depth_;
            expect_ = Expect::line_end;
        } else if (c == ']' || c == '}') {
            close();  // an empty inline table, or a trailing comma in one
        } else {
            start_segment();
        }
    }

    void on_value_char(char c) {
        if (c == '[' || c == '{') {
            open_.push_back({c, depth_});
            descend();
            if (c == '{') start_key();
        } else if (starts_date_without_time()) {
            fail("invalid TOML: a date followed by 'T' or a space needs a time (HH:MM) next");
        } else if (c == '}' && !open_.empty() && open_.back().bracket == '[') {
            // toml++ 3.3 hands it to its value parser, which asserts (or, built with
            // NDEBUG by clang, assumes) that no value starts with one.
            fail("invalid TOML: '}' inside an array");
        } else if (c == ']' || c == '}') {
            close();
        } else if (c == ',' && !open_.empty()) {
            // The next element or key is as deep as the first one was.
            depth_ = open_.back().depth + 1;
            if (open_.back().bracket == '{') start_key();
        }
    }

    // toml++ 3.3 reads a value that starts "YYYY-MM-DD" and goes on with 'T', 't' or
    // a space and more as a date-time, asserting (or assuming) that a digit follows.
    // Nothing else may follow in valid TOML anyway.
    bool starts_date_without_time() const {
        const std::string_view rest = text_.substr(pos_);
        const bool value_start =
            pos_ == 0 ||
            std::string_view(" \t\r\n=[,").find(text_[pos_ - 1]) != std::string_view::npos;
        if (!value_start || rest.size() < 12) return false;
        const auto digit = [&](size_t i) { return rest[i] >= '0' && rest[i] <= '9'; };
        for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
            if (!digit(i)) return false;
        }
        if (rest[4] != '-' || rest[7] != '-' || digit(11)) return false;
        if (rest[10] == 'T' || rest[10] == 't') return true;
        return rest[10] == ' ' &&
               std::string_view(" \t\r\n,]}#").find(rest[11]) == std::string_view::npos;
    }

    void start_key() {
        expect_ = Expect::key;
        in_segment_ = false;
    }

    void start_segment() {
        if (in_segment_) return;
        in_segment_ = true;
        descend();
    }

    void descend() {
        if (++depth_ > kMaxNesting) fail(fmt::format("nesting deeper than {}", kMaxNesting));
    }

    void close() {
        if (open_.empty()) return;
        depth_ = open_.back().depth;
        open_.pop_back();
        expect_ = Expect::value;
    }

    // Arrays (and, in TOML 1.1, inline tables) continue over line ends; anything else
    // ends with its line.
    void end_line() {
        if (!open_.empty()) return;
        start_key();
        depth_ = table_depth_;
    }

    void skip_comment() {
        while (pos_ < text_.size() && text_[pos_] != '\n') advance();
    }

    // Basic strings ("...", """...""") have backslash escapes; literal ones do not. A
    // multi-line string may end in one or two quotes of its own: """a""""" is `a""`.
    void skip_string(char quote) {
        const std::string triple(3, quote);
        const bool multi_line = text_.substr(pos_, 3) == triple;
        advance_by(multi_line ? 3 : 1);
        while (pos_ < text_.size()) {
            const char c = text_[pos_];
            if (c == '\\' && quote == '"' && multi_line) {
                skip_multi_line_escape();
                if (problem_) return;
            } else if (c == '\\' && quote == '"') {
                advance_by(2);
            } else if (c == '\n' && !multi_line) {
                return;  // unterminated: toml++ stops here
            } else if (c != quote) {
                advance();
            } else if (!multi_line) {
                return advance();
            } else if (text_.substr(pos_, 3) == triple) {
                advance_by(3);
                for (int extra = 0; extra < 2 && pos_ < text_.size() && text_[pos_] == quote;
                     ++extra) {
                    advance();
                }
                return;
            } else {
                advance();
            }
        }
    }

    // In a multi-line basic string toml++ asks whether the character after a
    // backslash is whitespace, and after a line-ending backslash, whether the first
    // character that is not a space or a line break is.
    void skip_multi_line_escape() {
        advance();  // the backslash
        if (pos_ < text_.size() && is_space_or_line_break(text_[pos_])) {
            while (pos_ < text_.size() && is_space_or_line_break(text_[pos_])) advance();
        } else if (pos_ < text_.size() && !is_non_ascii(text_[pos_])) {
            return advance();  // the escaped character
        }
        if (pos_ < text_.size() && is_non_ascii(text_[pos_])) {
            fail(
                "not supported: a non-ASCII character right after a backslash or a line-ending "
                "backslash in a multi-line string; write it as a \\u escape");
        }
    }

    static bool is_non_ascii(char c) { return static_cast<unsigned char>(c) >= 0x80; }

    static bool is_space_or_line_break(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
    }

    // Columns count characters, not bytes, as toml++'s positions do.
    void advance() {
        check_control_character();
        const auto byte = static_cast<unsigned char>(text_[pos_++]);
        if (byte == '\n') {
            ++line_;
            column_ = 1;
            line_offset_ = pos_;
        } else if ((byte & 0xc0) != 0x80) {
            ++column_;
        }
    }

    // TOML allows no raw control character but tab and line ends anywhere, in
    // strings and comments included; toml++ 3.3 reads on past some of them (a NUL in
    // a literal string after a broken value) into its non-ASCII whitespace check.
    void check_control_character() {
        const auto byte = static_cast<unsigned char>(text_[pos_]);
        if ((byte < 0x20 && byte != '\t' && byte != '\n' && byte != '\r') || byte == 0x7f) {
            fail(
                fmt::format("invalid TOML: a control character (U+{:04X}); in a string, "
                            "write it as an escape",
                            byte));
        }
    }

    // A quote right after a bare key's or value's character ("x = de'...") starts no
    // string for toml++, which reads the rest as part of a broken value.
    bool quote_inside_bare_text() const {
        if (pos_ == 0) return false;
        const char before = text_[pos_ - 1];
        return std::isalnum(static_cast<unsigned char>(before)) || before == '-' || before == '_' ||
               before == '+' || before == ':';
    }

    void advance_by(size_t n) {
        while (n-- > 0 && pos_ < text_.size()) advance();
    }

    std::string_view text_;
    size_t pos_ = 0;
    unsigned line_ = 1;
    unsigned column_ = 1;
    size_t line_offset_ = 0;
    Expect expect_ = Expect::key;
    bool in_segment_ = false;
    bool header_start_ = false;    // right after a header's "[": its key must start
    bool second_bracket_ = false;  // the header's "[[" has been seen
    unsigned depth_ = 0;
    unsigned table_depth_ = 0;
    std::vector<Open> open_;  // at most kMaxNesting deep: the scan stops there
    std::optional<PreScanProblem> problem_;
};

std::string first_lower(std::string_view text) {
    std::string out(text);
    if (!out.empty()) out[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(out[0])));
    return out;
}

// toml++ quotes what it saw verbatim, line breaks and control characters included:
// the error must stay one line, in a log that cannot be forged.
std::string escape_controls(std::string_view text) {
    std::string out;
    for (char c : text) {
        const auto u = static_cast<unsigned char>(c);
        out += u < 0x20 || u == 0x7f ? fmt::format("\\x{:02x}", u) : std::string(1, c);
    }
    return out;
}

void report_syntax_error(Diagnostics& diag, const toml::parse_error& error) {
    diag.fail_at(
        "", position_of(error.source()),
        fmt::format("invalid TOML: {}", escape_controls(first_lower(error.description()))));
}

// toml++ reports syntax errors by exception or by result, depending on how it was built.
std::optional<toml::table> parse_toml(Diagnostics& diag, std::string_view text,
                                      std::string_view source) {
#if TOML_EXCEPTIONS
    try {
        return toml::parse(text, source);
    } catch (const toml::parse_error& error) {
        report_syntax_error(diag, error);
        return std::nullopt;
    }
#else
    toml::parse_result result = toml::parse(text, source);
    if (!result) {
        report_syntax_error(diag, result.error());
        return std::nullopt;
    }
    return std::move(result).table();
#endif
}

// The error for text that must not reach toml++ (PreScan, size), if it has one. A
// TOML error on an earlier line is still the one reported: toml++ reads the lines
// before the problem's (which the scan passed) and stops where it would in the whole
// text, unless the cut leaves something open, which it reports as the end of file.
std::optional<ConfigError> problem_before_parse(std::string_view text, std::string_view source) {
    if (text.size() > kMaxConfigBytes) {
        return ConfigError{std::string(source), 0, 0, "", std::string(kTooLarge)};
    }
    auto problem = PreScan(text).find_problem();
    if (!problem) return std::nullopt;
    Diagnostics before(source);
    if (!parse_toml(before, text.substr(0, problem->line_offset), source)) {
        auto error = before.take();
        if (error->message.find("end-of-file") == std::string::npos) return error;
    }
    return ConfigError{std::string(source), problem->position.line, problem->position.column, "",
                       std::move(problem->message)};
}

// ---------------------------------------------------------------------------------
// Whole-config checks (validate).

void check_global(Diagnostics& diag, const GlobalConfig& global) {
    if (auto problem = check_int(global.threads, kThreadsRange)) {
        diag.fail("global.threads", *problem);
    }
    if (auto problem = check_duration(global.shutdown_grace, kShutdownGraceRange)) {
        diag.fail("global.shutdown_grace", *problem);
    }
    if (auto problem = check_duration(global.shutdown_delay, kShutdownDelayRange)) {
        diag.fail("global.shutdown_delay", *problem);
    }
    if (!global.admin_socket.empty()) {
        if (has_control_character(global.admin_socket)) {
            diag.fail(
                "global.admin_socket",
                fmt::format("must not contain control characters, got {:?}", global.admin_socket));
        } else if (!global.admin_socket.starts_with('/')) {
            diag.fail("global.admin_socket",
                      fmt::format("must be an absolute path, got {:?}", global.admin_socket));
        } else if (global.admin_socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
            diag.fail("global.admin_socket",
                      fmt::format("must be shorter than {} bytes (a unix socket path), got {}",
                                  sizeof(sockaddr_un{}.sun_path), global.admin_socket.size()));
        }
    }
    // Group names are looked up when the socket is made; here only what can never be one.
    const std::string& group = global.admin_socket_group;
    if (!group.empty() && (has_control_character(group) ||
                           group.find_first_of(": /") != std::string::npos || group.size() > 64)) {
        diag.fail("global.admin_socket_group",
                  fmt::format("must be a group name such as \"stickyd\", got {:?}", group));
    }
    // The daemon's own user must keep answering stickyctl run as that user.
    if (global.admin_socket_mode > 0777 || (global.admin_socket_mode & 0600) != 0600) {
        diag.fail("global.admin_socket_mode",
                  fmt::format("must let the owner read and write (0600 at least), got {:04o}",
                              global.admin_socket_mode));
    }
}

std::string unknown_group_message(const Config& config, std::string_view name) {
    if (config.target_groups.empty()) {
        return fmt::format("unknown target group {:?}; no [[target_group]] is defined", name);
    }
    std::vector<std::string_view> known;
    for (const auto& group : config.target_groups) known.push_back(group.name);
    return fmt::format("unknown target group {:?}{}; known groups: {}", name,
                       did_you_mean(name, known), quoted_list(known));
}

void check_listeners(Diagnostics& diag, const Config& config) {
    if (config.listeners.empty()) {
        diag.fail("listener", "no listeners; add a [[listener]] with bind and target_group");
        return;
    }
    std::map<std::string, size_t> binds;
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < config.listeners.size(); ++i) {
        const auto& listener = config.listeners[i];
        const std::string path = index_key("listener", i);
        if (listener.bind.family() == AF_UNSPEC) {
            diag.fail(path + ".bind",
                      fmt::format("not set; expected ip:port such as {}", kBindExample));
        } else if (auto [it, fresh] = binds.emplace(listener.bind.to_string(), i); !fresh) {
            diag.fail(path + ".bind",
                      fmt::format("duplicate bind address {} (also listener[{}]{})", it->first,
                                  it->second, diag.at_line(index_key("listener", it->second))));
        }
        if (listener.name.empty()) {
            diag.fail(path + ".name", "must not be empty");
        } else if (!is_valid_name(listener.name)) {
            diag.fail(path + ".name", fmt::format("{}, got {:?}", kNameRule, listener.name));
        } else if (auto [it, fresh] = names.emplace(listener.name, i); !fresh) {
            diag.fail(path + ".name",
                      fmt::format("duplicate listener name {:?} (also listener[{}]{})", it->first,
                                  it->second, diag.at_line(index_key("listener", it->second))));
        }
        if (!config.find_group(listener.target_group)) {
            diag.fail(path + ".target_group", unknown_group_message(config, listener.target_group));
        }
        if (auto problem = check_duration(listener.idle_timeout, kIdleTimeoutRange)) {
            diag.fail(path + ".idle_timeout", *problem);
        }
        if (auto problem = check_duration(listener.proxy_protocol_timeout, kProxyTimeoutRange)) {
            diag.fail(path + ".proxy_protocol_timeout", *problem);
        }
    }
}

void check_target(Diagnostics& diag, const std::string& path, const TargetConfig& target) {
    if (target.address.family() == AF_UNSPEC) {
        diag.fail(path + ".address",
                  fmt::format("not set; expected ip:port such as {}", kTargetExample));
    }
    if (auto problem = target_id_error(target.id)) diag.fail(path + ".id", *problem);
    if (auto problem = target_weight_error(target.weight)) diag.fail(path + ".weight", *problem);
}

// Two targets with one address would get two shares of the ring for one backend; two
// with one id would collide on the ring. Both point at the second and name the first.
void check_target_duplicates(Diagnostics& diag, const std::string& group_path,
                             const std::vector<TargetConfig>& targets) {
    std::map<std::string, size_t> addresses;
    std::map<std::string, size_t> ids;
    for (size_t i = 0; i < targets.size(); ++i) {
        const auto& target = targets[i];
        const std::string path = index_key(group_path + ".target", i);
        if (target.address.family() != AF_UNSPEC) {
            auto [it, fresh] = addresses.emplace(target.address.to_string(), i);
            if (!fresh) {
                const std::string first = index_key(group_path + ".target", it->second);
                diag.fail(path + ".address",
                          fmt::format("duplicate address {} in this group (also target[{}]{})",
                                      it->first, it->second, diag.at_line(first + ".address")));
            }
        }
        if (target.id.empty()) continue;
        auto [it, fresh] = ids.emplace(target.id, i);
        if (!fresh) {
            const std::string first = index_key(group_path + ".target", it->second);
            diag.fail(path + ".id",
                      fmt::format("duplicate target id {:?} (first used by target[{}]{})",
                                  it->first, it->second, diag.at_line(first + ".id")));
        }
    }
}

// Each name valid and once (DNS names ignore case), one refresh in range. A file's
// single string is the key itself; a list's names are dns[i].
void check_dns_names(Diagnostics& diag, const std::string& group_path,
                     const std::vector<DnsDiscoveryConfig>& names) {
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < names.size(); ++i) {
        const std::string text = names[i].text();
        const std::string path =
            names.size() == 1 ? group_path + ".dns" : index_key(group_path + ".dns", i);
        if (!parse_dns_name(text)) diag.fail(path, bad_dns_message(text));
        if (auto problem = check_duration(names[i].refresh, kDnsRefreshRange)) {
            diag.fail(group_path + ".dns_refresh", *problem);
        }
        std::string folded = text;
        for (char& c : folded) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto [it, fresh] = seen.emplace(std::move(folded), i);
        if (!fresh) {
            diag.fail(path, fmt::format("duplicate name {:?} in this group (also dns[{}]{})", text,
                                        it->second,
                                        diag.at_line(index_key(group_path + ".dns", it->second))));
        }
    }
}

// build_maglev throws on a size it cannot use; asking it first turns that into a
// load-time error, with one owner for the rule.
void check_maglev(Diagnostics& diag, const std::string& path, const TargetGroupConfig& group) {
    const uint32_t size = group.maglev_table_size;
    if (auto problem = check_int(size, kMaglevSizeRange)) {
        diag.fail(path, *problem);
    } else if (auto error = maglev_table_size_error(size, group.targets.size())) {
        // The key path already names the key; drop the balancer's own prefix.
        constexpr std::string_view kPrefix = "maglev_table_size ";
        if (std::string_view(*error).starts_with(kPrefix)) error->erase(0, kPrefix.size());
        diag.fail(path, *error);
    }
}

}  // namespace

std::optional<std::string> target_address_error(std::string_view text) {
    if (SocketAddress::parse(text)) return std::nullopt;
    return bad_address_message(text, kTargetExample);
}

std::optional<std::string> target_id_error(std::string_view id) {
    if (id.empty()) return "must not be empty";
    if (!is_valid_name(id)) return fmt::format("{}, got {:?}", kNameRule, id);
    return std::nullopt;
}

std::optional<std::string> target_weight_error(int64_t weight) {
    return check_int(weight, kWeightRange);
}

std::string weight_range_message(std::string_view got) {
    return int_range_message(kWeightRange, got);
}

std::optional<std::string> capacity_error(const TargetGroupConfig& group, size_t targets,
                                          uint64_t total_weight) {
    if (group.algorithm == Algorithm::maglev) {
        return maglev_table_size_error(group.maglev_table_size, targets);
    }
    return ring_weight_error(total_weight);
}

namespace {

// Ranges again (for configs built in memory) and the rules that relate keys.
void check_health_check(Diagnostics& diag, const std::string& path, const HealthCheckConfig& hc) {
    if (auto problem = check_duration(hc.interval, kHealthIntervalRange)) {
        diag.fail(path + ".interval", *problem);
    }
    if (hc.timeout) {
        if (auto problem = check_duration(*hc.timeout, kHealthTimeoutRange)) {
            diag.fail(path + ".timeout", *problem);
        } else if (*hc.timeout >= hc.interval) {
            diag.fail(path + ".timeout",
                      fmt::format("must be shorter than the interval ({}), got {}",
                                  format_duration(hc.interval), format_duration(*hc.timeout)));
        }
    }
    if (auto problem = check_int(hc.healthy_threshold, kHealthThresholdRange)) {
        diag.fail(path + ".healthy_threshold", *problem);
    }
    if (auto problem = check_int(hc.unhealthy_threshold, kHealthThresholdRange)) {
        diag.fail(path + ".unhealthy_threshold", *problem);
    }
    if (auto problem = check_int(hc.passive_failures, kPassiveFailuresRange)) {
        diag.fail(path + ".passive_failures", *problem);
    }
    if (hc.port && *hc.port == 0) {
        diag.fail(path + ".port", int_range_message(kHealthPortRange, "0"));
    }
    if (hc.protocol != HealthProtocol::tcp) {
        // The path goes into a request line verbatim: no room for spaces or controls.
        const bool clean = std::all_of(hc.path.begin(), hc.path.end(), [](char c) {
            const auto u = static_cast<unsigned char>(c);
            return u > 0x20 && u != 0x7f;
        });
        if (!hc.path.starts_with('/')) {
            diag.fail(path + ".path", fmt::format("must start with \"/\", got {:?}", hc.path));
        } else if (!clean) {
            diag.fail(
                path + ".path",
                fmt::format("must not contain spaces or control characters, got {:?}", hc.path));
        } else if (hc.path.size() > kMaxHealthPath) {
            diag.fail(path + ".path", fmt::format("must be at most {} characters, got {}",
                                                  kMaxHealthPath, hc.path.size()));
        }
        if (hc.matcher.ranges().empty()) {
            diag.fail(path + ".matcher", "must name at least one status code, e.g. \"200-399\"");
        }
    }
}

void check_target_group(Diagnostics& diag, const std::string& path,
                        const TargetGroupConfig& group) {
    if (!is_valid_group_name(group.name)) {
        diag.fail(path + ".name",
                  fmt::format("must be one or more of A-Z a-z 0-9 _ . -, got {:?}", group.name));
    }
    if (group.algorithm == Algorithm::maglev) {
        check_maglev(diag, path + ".maglev_table_size", group);
    } else {
        uint64_t weight = 0;
        for (const TargetConfig& t : group.targets) weight += t.weight;
        if (auto problem = capacity_error(group, group.targets.size(), weight)) {
            diag.fail(path + ".target", *problem);
        }
    }
    if (auto problem = check_duration(group.connect_timeout, kConnectTimeoutRange)) {
        diag.fail(path + ".connect_timeout", *problem);
    }
    if (auto problem = check_int(group.connect_retries, kRetriesRange)) {
        diag.fail(path + ".connect_retries", *problem);
    }
    if (auto problem = check_int(group.stickiness.prefix_v4, kPrefixV4Range)) {
        diag.fail(path + ".stickiness.prefix_v4", *problem);
    }
    if (auto problem = check_int(group.stickiness.prefix_v6, kPrefixV6Range)) {
        diag.fail(path + ".stickiness.prefix_v6", *problem);
    }
    check_health_check(diag, path + ".health_check", group.health_check);
    if (auto problem = check_duration(group.deregistration_delay.timeout, kDeregistrationRange)) {
        diag.fail(path + ".deregistration_delay.timeout", *problem);
    }
    if (auto problem = check_int(group.minimum_healthy_targets.count, kMinHealthyCountRange)) {
        diag.fail(path + ".minimum_healthy_targets.count", *problem);
    }
    if (const auto& percentage = group.minimum_healthy_targets.percentage) {
        if (auto problem = check_int(*percentage, kMinHealthyPercentRange)) {
            diag.fail(path + ".minimum_healthy_targets.percentage", *problem);
        }
    }
    check_dns_names(diag, path, group.dns);
    for (size_t i = 0; i < group.targets.size(); ++i) {
        check_target(diag, index_key(path + ".target", i), group.targets[i]);
    }
    check_target_duplicates(diag, path, group.targets);
}

void check_target_groups(Diagnostics& diag, const std::vector<TargetGroupConfig>& groups) {
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < groups.size(); ++i) {
        const std::string path = index_key("target_group", i);
        check_target_group(diag, path, groups[i]);
        auto [it, fresh] = names.emplace(groups[i].name, i);
        if (!fresh) {
            diag.fail(path + ".name",
                      fmt::format("duplicate target group name {:?} (also target_group[{}]{})",
                                  it->first, it->second,
                                  diag.at_line(index_key("target_group", it->second) + ".name")));
        }
    }
}

// IP versions as bits, for the sets of them a group's clients and targets speak.
constexpr unsigned kIpv4 = 1;
constexpr unsigned kIpv6 = 2;

std::string_view version_name(unsigned versions) {
    return versions == kIpv4 ? "IPv4" : "IPv6";
}

// Which IP versions of client a listener hands its group: a PROXY header may name
// either, and "[::]" is dual-stack (open_listener clears IPV6_V6ONLY).
unsigned client_versions(const ListenerConfig& listener) {
    if (listener.accept_proxy_protocol) return kIpv4 | kIpv6;
    switch (ip_version(listener.bind)) {
        case 4:
            return kIpv4;
        case 6: {
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(listener.bind.sa());
            return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? kIpv4 | kIpv6 : kIpv6;
        }
        default:
            return 0;
    }
}

// One connection cannot carry an IPv4 source to an IPv6 target or the other way
// round: such clients are connected from stickyd's own address (counted at run
// time). When that is so for every client a group can get, the key would never take
// effect, which is refused here rather than discovered in production. DNS targets
// are not known yet, so a group with dns is left to the run-time count.
void check_preserve_client_ip(Diagnostics& diag, const Config& config) {
    for (size_t i = 0; i < config.target_groups.size(); ++i) {
        const TargetGroupConfig& group = config.target_groups[i];
        if (!group.preserve_client_ip || !group.dns.empty()) continue;
        unsigned targets = 0;
        for (const TargetConfig& t : group.targets) {
            if (const int v = ip_version(t.address); v != 0) targets |= v == 4 ? kIpv4 : kIpv6;
        }
        unsigned clients = 0;
        const ListenerConfig* example = nullptr;
        for (const ListenerConfig& listener : config.listeners) {
            if (listener.target_group != group.name) continue;
            clients |= client_versions(listener);
            if (example == nullptr) example = &listener;
        }
        if (targets == 0 || clients == 0 || (targets & clients) != 0) continue;
        diag.fail(index_key("target_group", i) + ".preserve_client_ip",
                  fmt::format("every target is {} but the group's listeners only take {} clients "
                              "(listener {:?} on {}), and one connection cannot carry both: no "
                              "client would keep its address; give the group {} targets or "
                              "remove the key",
                              version_name(targets), version_name(clients), example->name,
                              example->bind.to_string(), version_name(clients)));
    }
}

// Whether two TCP sockets bound to these would clash: the same port on the same IP,
// or on a wildcard that covers the other's ([::] is dual-stack, so it covers IPv4).
bool sockets_clash(const SocketAddress& a, const SocketAddress& b) {
    if (a.port() != b.port()) return false;
    const IpKey ka = ip_key_of(a.sa());
    const IpKey kb = ip_key_of(b.sa());
    if (ka == kb) return true;
    auto covers = [](const IpKey& wildcard, const IpKey& other) {
        const bool any = std::all_of(wildcard.bytes.begin(), wildcard.bytes.begin() + wildcard.size,
                                     [](uint8_t byte) { return byte == 0; });
        return any && (wildcard.size == 16 || other.size == 4);
    };
    return covers(ka, kb) || covers(kb, ka);
}

// The metrics address is the read-only door: sharing a socket with the admin
// address or a listener would either fail to bind or hand it to the wrong server.
void check_metrics_address(Diagnostics& diag, const Config& config) {
    if (!config.global.metrics_address) return;
    const SocketAddress& metrics = *config.global.metrics_address;
    const std::string path = "global.metrics_address";
    constexpr std::string_view kOwnPort = "give it a port of its own";
    if (config.global.admin_address && sockets_clash(metrics, *config.global.admin_address)) {
        diag.fail(path, fmt::format("{} clashes with admin_address {}; {}", metrics.to_string(),
                                    config.global.admin_address->to_string(), kOwnPort));
    }
    for (size_t i = 0; i < config.listeners.size(); ++i) {
        const SocketAddress& bind = config.listeners[i].bind;
        if (bind.family() == AF_UNSPEC || !sockets_clash(metrics, bind)) continue;
        const std::string listener = index_key("listener", i);
        diag.fail(path,
                  fmt::format("{} clashes with {}.bind {}{}; {}", metrics.to_string(), listener,
                              bind.to_string(), diag.at_line(listener + ".bind"), kOwnPort));
    }
}

void check_config(Diagnostics& diag, const Config& config) {
    check_global(diag, config.global);
    check_listeners(diag, config);
    check_target_groups(diag, config.target_groups);
    check_preserve_client_ip(diag, config);
    check_metrics_address(diag, config);
}

// ---------------------------------------------------------------------------------
// Files and durations.

// Returns 0 or the errno that stopped the read. Stops once `out` holds more than
// `limit` bytes: parse_config reports that, and an endless file is not read on.
int read_file_up_to(const std::string& path, size_t limit, std::string& out) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    char buffer[65536];
    int error = 0;
    while (out.size() <= limit) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n > 0) {
            out.append(buffer, static_cast<size_t>(n));
        } else if (n == 0) {
            break;
        } else if (errno != EINTR) {
            error = errno;
            break;
        }
    }
    ::close(fd);
    return error;
}

std::optional<int64_t> unit_in_ms(std::string_view unit) {
    if (unit.empty() || unit == "s") return 1000;
    if (unit == "ms") return 1;
    if (unit == "m") return 60'000;
    if (unit == "h") return 3'600'000;
    return std::nullopt;
}

std::string_view take_digits(std::string_view text, size_t& pos) {
    size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    return text.substr(start, pos - start);
}

// The milliseconds in `digits` tenths/hundredths/... of `unit_ms`, if that is whole.
std::optional<int64_t> fraction_in_ms(std::string_view digits, int64_t unit_ms) {
    while (!digits.empty() && digits.back() == '0') digits.remove_suffix(1);
    if (digits.empty()) return 0;
    // Beyond 9 digits no unit (at most 3.6e6 ms) leaves a whole millisecond.
    if (digits.size() > 9) return std::nullopt;
    int64_t numerator = 0;
    int64_t denominator = 1;
    for (char c : digits) {
        numerator = numerator * 10 + (c - '0');
        denominator *= 10;
    }
    int64_t scaled = numerator * unit_ms;  // < 1e9 * 3.6e6: fits
    if (scaled % denominator != 0) return std::nullopt;
    return scaled / denominator;
}

}  // namespace

// ---------------------------------------------------------------------------------
// Public interface.

HealthCheckConfig::HealthCheckConfig() : matcher(std::get<Matcher>(parse_matcher("200-399"))) {}

Duration HealthCheckConfig::effective_timeout() const {
    if (timeout) return *timeout;
    const Duration fallback = protocol == HealthProtocol::http ? Duration{6000} : Duration{10000};
    // A short interval without a timeout: the NLB default would overlap the next check.
    return fallback < interval ? fallback : interval / 2;
}

const TargetGroupConfig* Config::find_group(std::string_view name) const {
    for (const auto& group : target_groups) {
        if (group.name == name) return &group;
    }
    return nullptr;
}

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

ConfigResult load_config_file(const std::string& path) {
    std::string text;
    if (int error = read_file_up_to(path, kMaxConfigBytes, text); error != 0) {
        return ConfigError{path, 0, 0, "", fmt::format("cannot read: {}", std::strerror(error))};
    }
    return parse_config(text, path);
}

ConfigResult parse_config(std::string_view toml_text, std::string_view source_name) {
    if (auto error = problem_before_parse(toml_text, source_name)) return *error;
    Diagnostics diag(source_name);
    auto root = parse_toml(diag, toml_text, source_name);
    if (!root) return *diag.take();
    Config config = read_config(diag, *root);
    if (!diag.failed()) check_config(diag, config);
    if (auto error = diag.take()) return *error;
    return config;
}

std::optional<ConfigError> validate(const Config& config, std::string_view source_name) {
    Diagnostics diag(source_name);
    check_config(diag, config);
    return diag.take();
}

std::optional<DnsDiscoveryConfig> parse_dns_name(std::string_view text) {
    return dns_name_of(text);
}

std::optional<Duration> parse_duration(std::string_view text) {
    size_t pos = 0;
    std::string_view whole = take_digits(text, pos);
    if (whole.empty()) return std::nullopt;
    std::string_view fraction;
    if (pos < text.size() && text[pos] == '.') {
        ++pos;
        fraction = take_digits(text, pos);
        if (fraction.empty()) return std::nullopt;
    }
    auto unit_ms = unit_in_ms(text.substr(pos));
    if (!unit_ms) return std::nullopt;
    int64_t count = 0;
    auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), count);
    if (ec != std::errc()) return std::nullopt;
    auto extra = fraction_in_ms(fraction, *unit_ms);
    if (!extra) return std::nullopt;
    int64_t ms = 0;
    if (__builtin_mul_overflow(count, *unit_ms, &ms) || __builtin_add_overflow(ms, *extra, &ms)) {
        return std::nullopt;
    }
    return Duration(ms);
}

}  // namespace stickyd
