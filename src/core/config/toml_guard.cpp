// The guard in front of toml++: a scan that finds what must not reach the parser,
// the parse itself with its errors as one line, and the bounded file read.
#include "core/config/toml_guard.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <vector>

namespace stickyd::config_detail {
namespace {

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
        if (text_.starts_with("\xef\xbb\xbf")) pos_ = start_ = 3;
        while (pos_ < text_.size() && !problem_) {
            const char c = text_[pos_];
            if (header_start_) expect_header_key(c);
            if (is_non_ascii(c)) {
                // TOML has them only in strings and comments; anywhere else toml++
                // asks whether they are whitespace.
                fail("invalid TOML: a non-ASCII character outside a string or comment");
            }
            if (problem_) break;
            if (expect_ == Expect::value) track_bare_value(c);
            if (c == '#') {
                skip_comment();
            } else if ((c == '"' || c == '\'') && quote_starts_no_string()) {
                fail(
                    fmt::format("invalid TOML: a quote right after '{}', where no string can start",
                                text_[pos_ - 1]));
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
    void expect_header_key(char c) {
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
        if (starts_date_without_time()) {
            fail("invalid TOML: a date followed by 'T' or a space needs a time (HH:MM) next");
        } else if (in_bare_value_) {
            // Brackets in it are part of it for toml++, not arrays or tables.
        } else if (c == '[' || c == '{') {
            open_.push_back({c, depth_});
            descend();
            if (c == '{') start_key();
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
        if (!value_start) return false;
        if (date_then_lone_digit()) return true;
        if (rest.size() < 12) return false;
        for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
            if (!is_digit(rest[i])) return false;
        }
        if (rest[4] != '-' || rest[7] != '-' || is_digit(rest[11])) return false;
        if (rest[10] == 'T' || rest[10] == 't') return true;
        return rest[10] == ' ' && !ends_value(rest[11]);
    }

    // When the first ten characters of a value (underscores aside) start with a digit
    // and have '-' as the 5th and 8th, and a space and a digit follow, toml++ 3.3
    // reads on as the time of a date-time, asserting (or assuming) that the value goes
    // on after that digit: "1979-05-2= 1" followed by a line break broke it.
    bool date_then_lone_digit() const {
        std::string chars;
        size_t i = pos_;
        for (; i < text_.size() && !ends_value(text_[i]) && chars.size() <= 10; ++i) {
            if (text_[i] != '_') chars += text_[i];
        }
        if (chars.size() != 10 || !is_digit(chars[0]) || chars[4] != '-' || chars[7] != '-') {
            return false;
        }
        return i + 1 < text_.size() && text_[i] == ' ' && is_digit(text_[i + 1]) &&
               (i + 2 == text_.size() || ends_value(text_[i + 2]));
    }

    static bool is_digit(char c) { return c >= '0' && c <= '9'; }

    // What ends a value for toml++ (the non-ASCII whitespace it also counts never gets
    // this far).
    static bool ends_value(char c) {
        return std::string_view(" \t\r\n\v\f,]}#").find(c) != std::string_view::npos;
    }

    void start_key() {
        expect_ = Expect::key;
        in_segment_ = false;
        in_bare_value_ = false;
    }

    // toml++ reads a value that is no string, array or inline table (a number, a date,
    // a boolean, or something broken) up to the next whitespace, ',', ']', '}' or '#',
    // taking whatever comes between as part of it.
    void track_bare_value(char c) {
        if (ends_value(c)) {
            in_bare_value_ = false;
        } else if (c != '[' && c != '{' && c != '"' && c != '\'') {
            in_bare_value_ = true;
        }
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
        refuse_control_character();
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
    void refuse_control_character() {
        const auto byte = static_cast<unsigned char>(text_[pos_]);
        if ((byte < 0x20 && byte != '\t' && byte != '\n' && byte != '\r') || byte == 0x7f) {
            fail(
                fmt::format("invalid TOML: a control character (U+{:04X}); in a string, "
                            "write it as an escape",
                            byte));
        }
    }

    // toml++ starts a string only where a key or a value starts: after a space, a line
    // break, '=', '[', '{', ',' or, between key segments, '.', and never inside a bare
    // value. Anywhere else ("x = de'...", "x = 1.'...'", "x = 1['...']") it reads the
    // quote as part of a broken key or value, and a bare value runs on to the next
    // whitespace, ',', ']', '}' or '#', asking of each character whether it is
    // whitespace.
    bool quote_starts_no_string() const {
        if (pos_ == start_) return false;
        if (in_bare_value_) return true;
        const char before = text_[pos_ - 1];
        if (before == '.') return expect_ == Expect::value;
        return std::string_view(" \t\r\n=[{,").find(before) == std::string_view::npos;
    }

    void advance_by(size_t n) {
        while (n-- > 0 && pos_ < text_.size()) advance();
    }

    std::string_view text_;
    size_t start_ = 0;  // past the byte order mark, if there is one
    size_t pos_ = 0;
    unsigned line_ = 1;
    unsigned column_ = 1;
    size_t line_offset_ = 0;
    Expect expect_ = Expect::key;
    bool in_segment_ = false;
    bool in_bare_value_ = false;   // inside a value that is no string, array or table
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

}  // namespace

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

}  // namespace stickyd::config_detail
