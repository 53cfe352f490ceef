// The parse step every stickyd program shares: CLI11 signals --help and --version
// with exceptions, a usage error is one line naming the program, and a mistyped
// flag or command gets a did-you-mean.
//
// Exit status, one rule for stickyd and stickyctl: 0 done; 1 the configuration or
// the environment is wrong (a bad file, a port in use, an unreachable daemon); 2
// the command line is wrong.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "stickyd/words.hpp"

namespace stickyd {

inline constexpr int kExitConfigError = 1;
inline constexpr int kExitUsageError = 2;

// An unsigned flag from min to max; a word that is no number says so, rather than
// CLI11's "Could not convert".
inline CLI::Validator number_in(unsigned min, unsigned max) {
    return CLI::Validator(
        [min, max](std::string& text) -> std::string {
            unsigned value = 0;
            const char* end = text.data() + text.size();
            const auto [ptr, ec] = std::from_chars(text.data(), end, value);
            if (ptr != end || ec == std::errc::invalid_argument) {
                return fmt::format("'{}' is not a number", text);
            }
            if (ec != std::errc() || value < min || value > max) {
                return fmt::format("must be from {} to {}, got {}", min, max, text);
            }
            return {};
        },
        fmt::format("{}-{}", min, max));
}

namespace detail {

inline std::string usage_line(std::string_view program, std::string_view what) {
    return fmt::format("{}: {} (see {} --help)", program, what, program);
}

inline std::string hint(std::string_view word, const std::vector<std::string>& names,
                        std::string_view quote) {
    const std::vector<std::string_view> candidates(names.begin(), names.end());
    const auto match = closest_match(word, candidates);
    if (!match) return {};
    return fmt::format(" (did you mean {}{}{}?)", quote, *match, quote);
}

inline std::vector<std::string> long_flags(const CLI::App& app) {
    std::vector<std::string> flags;
    for (const CLI::Option* option : app.get_options()) {
        for (const std::string& name : option->get_lnames()) flags.push_back("--" + name);
    }
    return flags;
}

inline std::vector<std::string> command_names(const CLI::App& app) {
    std::vector<std::string> names;
    for (const CLI::App* command : app.get_subcommands([](const CLI::App*) { return true; }))
        names.push_back(command->get_name());
    return names;
}

inline std::string unknown_option(const CLI::App& command, const std::string& word,
                                  std::string_view program) {
    const std::string flag = word.substr(0, word.find('='));
    const std::string suggestion = hint(flag, long_flags(command), "");
    if (suggestion.empty()) return usage_line(program, "unknown option " + flag);
    return fmt::format("{}: unknown option {}{}", program, flag, suggestion);
}

inline std::string unknown_command(const CLI::App& app, const std::string& word,
                                   std::string_view program) {
    const std::string suggestion = hint(word, command_names(app), "'");
    if (suggestion.empty()) return usage_line(program, fmt::format("unknown command '{}'", word));
    return fmt::format("{}: unknown command '{}'{}", program, word, suggestion);
}

// What `app` (or the command it ran) did not take, as one line: an unknown command
// first (its flags would be misread without it), then an unknown option (a value
// after it is left over too), then any stray word. CLI11 does not keep the
// leftovers in command-line order, so each kind is looked for on its own.
inline std::optional<std::string> unexpected_argument(const CLI::App& app,
                                                      std::string_view program) {
    const CLI::App* command = &app;
    for (const CLI::App* sub : app.get_subcommands()) command = sub;
    const std::vector<std::string> left = command->remaining();
    if (left.empty()) return std::nullopt;
    auto is_flag = [](const std::string& word) { return word.starts_with("-"); };
    if (command == &app && !command_names(app).empty()) {
        auto word = std::find_if_not(left.begin(), left.end(), is_flag);
        if (word != left.end()) return unknown_command(app, *word, program);
    }
    auto flag = std::find_if(left.begin(), left.end(), is_flag);
    if (flag != left.end()) return unknown_option(*command, *flag, program);
    return usage_line(program, fmt::format("unexpected argument '{}'", left.front()));
}

}  // namespace detail

// nullopt: parsed, carry on. Otherwise the exit status: 0 after --help or --version
// (already printed), kExitUsageError after one line on stderr. Extras must be
// allowed on `app` (before its subcommands are added), so that an unknown flag or
// command reaches the did-you-mean here instead of CLI11's generic error.
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv,
                                             std::string_view program) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::Success& e) {
        return app.exit(e);
    } catch (const CLI::ValidationError& e) {
        // Already "--flag: what was wrong".
        fmt::print(stderr, "{}: {}\n", program, e.what());
        return kExitUsageError;
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "{}\n", detail::usage_line(program, e.what()));
        return kExitUsageError;
    }
    if (auto line = detail::unexpected_argument(app, program)) {
        fmt::print(stderr, "{}\n", *line);
        return kExitUsageError;
    }
    return std::nullopt;
}

}  // namespace stickyd
