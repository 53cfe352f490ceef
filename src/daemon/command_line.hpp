// The parse step every stickyd program shares: CLI11 signals --help and --version
// with exceptions, and a usage error must be one line naming the program.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>
#include <string_view>

namespace stickyd {

inline constexpr int kExitUsageError = 2;

// nullopt: parsed, carry on. Otherwise the exit status: 0 after --help or --version
// (already printed), kExitUsageError after "PROGRAM: what (see PROGRAM --help)".
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
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "{}: {} (see {} --help)\n", program, e.what(), program);
        return kExitUsageError;
    }
    return std::nullopt;
}

}  // namespace stickyd
