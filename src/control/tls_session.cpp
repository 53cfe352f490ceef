#include "control/tls_session.hpp"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <climits>

#include "stickyd/address.hpp"

namespace stickyd {

namespace detail {
void FreeSslCtx::operator()(SSL_CTX* ctx) const {
    SSL_CTX_free(ctx);
}
void FreeSsl::operator()(SSL* ssl) const {
    SSL_free(ssl);
}
}  // namespace detail

namespace {

// OpenSSL's error queue is per thread and outlives the call that filled it: take
// what it says and leave it empty, so that the next check starts clean.
std::string take_errors(int ssl_error) {
    std::string text;
    // The earliest entry is the cause; later ones only say what it broke.
    if (const unsigned long e = ERR_get_error(); e != 0) {
        const char* reason = ERR_reason_error_string(e);
        text = reason != nullptr ? reason : fmt::format("OpenSSL error {:#x}", e);
    }
    ERR_clear_error();
    if (!text.empty()) return text;
    return fmt::format("OpenSSL reported no reason (SSL_get_error {})", ssl_error);
}

}  // namespace

std::unique_ptr<TlsContext> TlsContext::create() {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
        ERR_clear_error();
        return nullptr;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // The NLB does not validate target certificates either: a check asks whether
    // the target serves, not whom it claims to be.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    // A check is one request long; a target asking to renegotiate is misbehaving.
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    return std::unique_ptr<TlsContext>(new TlsContext(ctx));
}

std::string sni_for(std::string_view host) {
    unsigned char bytes[16];
    if (parse_ip_bytes(AF_INET, host, bytes) || parse_ip_bytes(AF_INET6, host, bytes)) return {};
    return std::string(host);
}

std::unique_ptr<TlsSession> TlsSession::create(const TlsContext& context, std::string_view host) {
    std::unique_ptr<TlsSession> session(new TlsSession());
    session->ssl_.reset(SSL_new(context.get()));
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());
    if (!session->ssl_ || in == nullptr || out == nullptr) {
        BIO_free(in);
        BIO_free(out);
        ERR_clear_error();
        return nullptr;
    }
    // An empty input means "not yet", never end of stream: the caller sees the
    // peer's FIN on the socket and says so itself.
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(session->ssl_.get(), in, out);
    session->in_ = in;
    session->out_ = out;
    SSL_set_connect_state(session->ssl_.get());
    const std::string name = sni_for(host);
    // A name OpenSSL refuses (longer than 255) goes without SNI rather than
    // failing a target that may not need it.
    if (!name.empty() && SSL_set_tlsext_host_name(session->ssl_.get(), name.c_str()) != 1) {
        ERR_clear_error();
    }
    return session;
}

TlsSession::Status TlsSession::status_of(int ret) {
    const int code = SSL_get_error(ssl_.get(), ret);
    switch (code) {
        case SSL_ERROR_WANT_READ:
            ERR_clear_error();
            return Status::want_input;
        case SSL_ERROR_ZERO_RETURN:
            ERR_clear_error();
            error_ = "the target closed the TLS session (close_notify)";
            return Status::closed;
        default:
            error_ = take_errors(code);
            return Status::failed;
    }
}

TlsSession::Status TlsSession::handshake() {
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl_.get());
    return ret == 1 ? Status::done : status_of(ret);
}

TlsSession::Status TlsSession::write(std::string_view plaintext) {
    ERR_clear_error();
    if (plaintext.size() > INT_MAX) {
        error_ = "request too large";
        return Status::failed;
    }
    // A memory BIO takes everything, so one SSL_write either writes it all or fails.
    const int ret = SSL_write(ssl_.get(), plaintext.data(), static_cast<int>(plaintext.size()));
    return ret > 0 ? Status::done : status_of(ret);
}

TlsSession::Read TlsSession::read(char* out, size_t capacity) {
    ERR_clear_error();
    const int ret =
        SSL_read(ssl_.get(), out, static_cast<int>(std::min<size_t>(capacity, INT_MAX)));
    if (ret > 0) return {Status::done, static_cast<size_t>(ret)};
    return {status_of(ret)};
}

bool TlsSession::feed(const char* data, size_t size) {
    if (size > INT_MAX) return false;
    const int n = static_cast<int>(size);
    if (BIO_write(in_, data, n) == n) return true;
    ERR_clear_error();
    return false;
}

bool TlsSession::has_output() const {
    return BIO_ctrl_pending(out_) > 0;
}

void TlsSession::take_output(std::string& out) {
    const size_t pending = BIO_ctrl_pending(out_);
    if (pending == 0) return;
    const size_t at = out.size();
    out.resize(at + pending);
    const int got = BIO_read(out_, out.data() + at, static_cast<int>(pending));
    out.resize(at + static_cast<size_t>(std::max(got, 0)));
}

}  // namespace stickyd
